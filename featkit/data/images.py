"""Robust image decoding: every file either becomes an RGB image or a stated reason.

Handles EXIF orientation, any PIL mode (CMYK, 16-bit, float, palette with alpha,
greyscale), JPEG draft mode so large scans decode at reduced size, and decompression
bombs (refused with the pixel count). Truncated and non-image files raise
:class:`ImageLoadError` whose message is the reason recorded in the store.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default ceiling on decoded pixels (twice Pillow's own warning threshold).
DEFAULT_MAX_PIXELS = 2 * 89_478_485

_WHITE = (255, 255, 255)


class ImageLoadError(Exception):
    """An image that cannot be embedded; ``str(err)`` is the recorded reason."""


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        else:  # 32-bit int or float: stretch the observed range
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = np.clip((np.nan_to_num(arr) - lo) * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(
    path: str | os.PathLike,
    *,
    draft_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``path`` to an upright RGB image.

    ``draft_size`` lets JPEG decoding skip resolution it will not need: the decoder
    scales by 1/2, 1/4 or 1/8 while both sides stay at least ``draft_size`` pixels.
    Images with more than ``max_pixels`` pixels (after draft scaling) are refused
    before decoding.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except OSError as err:
        raise ImageLoadError(f"cannot read file: {err.strerror or err}") from None
    if size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # checked below, after draft mode has shrunk a JPEG
            try:
                with Image.open(path) as img:
                    if draft_size and img.format == "JPEG":
                        img.draft("RGB", (draft_size, draft_size))
                    width, height = img.size
                    if width * height > max_pixels:
                        raise ImageLoadError(
                            f"decompression bomb refused: {width}x{height} = {width * height:,} pixels "
                            f"exceeds the limit of {max_pixels:,}"
                        )
                    img.load()
                    ImageOps.exif_transpose(img, in_place=True)  # no copy when upright already
                    return _to_rgb(img)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (format not recognised)") from None
    except OSError as err:
        msg = str(err)
        if "truncated" in msg or "broken data stream" in msg:
            raise ImageLoadError(f"truncated image: {msg}") from None
        raise ImageLoadError(f"cannot decode image: {msg}") from None
    except (ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise ImageLoadError(f"cannot decode image: {type(err).__name__}: {err}") from None
