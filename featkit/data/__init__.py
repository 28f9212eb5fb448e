"""The data layer: manifests (ids, labels, groups, split), robust image decoding, splits."""

from featkit.data.images import ImageLoadError, load_image
from featkit.data.manifest import Manifest, infer_config, load_manifest

__all__ = ["ImageLoadError", "Manifest", "infer_config", "load_image", "load_manifest"]
