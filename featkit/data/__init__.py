"""Collections: manifests, image loading, splits."""

from featkit.data.images import ImageLoadError, load_image
from featkit.data.manifest import Collection, load_collection

__all__ = ["Collection", "ImageLoadError", "load_collection", "load_image"]
