"""Extraction at scale: the Ray Data engine (``pip install 'featkit[ray]'``).

Importing this package does not import Ray; the engine does when it runs.
"""

from featkit.distributed.ray_engine import connect, ray_device, run_ray

__all__ = ["connect", "ray_device", "run_ray"]
