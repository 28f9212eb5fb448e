"""featkit: cached CNN embeddings and per-task heads for multi-label image collections."""

from featkit.errors import FeatkitError

__version__ = "0.1.0"

__all__ = ["FeatkitError", "__version__"]
