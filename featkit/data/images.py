"""Robust image decoding: every file either becomes an RGB image or a stated reason.

Handles EXIF orientation, any PIL mode (CMYK, 16-bit, float, palette with alpha,
greyscale), JPEG draft mode so large scans decode at reduced size, and bounds the
memory of any one image: decompression bombs (refused with the pixel count) and
extreme aspect ratios (refused with the ratio, before the short-side resize turns a
few kilobytes into gigabytes). Anything that is not a readable regular file, truncated
or damaged data, and float pixels that are NaN or infinite raise
:class:`ImageLoadError`, whose message is the reason recorded in the store.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default ceiling on decoded pixels (twice Pillow's own warning threshold).
DEFAULT_MAX_PIXELS = 2 * 89_478_485

#: Default ceiling on the ratio of the long side to the short side. Resizing the short
#: side to the backbone's resize size r makes an image of ratio x r² pixels, so this cap
#: bounds that intermediate too: 200 x 256² = 13 Mpx (52 MB in Pillow's 4-byte pixels; a
#: 20000x100 PNG raised peak RSS by 79 MiB), where a 1 KB 40000x8 PNG (5000:1) made
#: 1,280,000x256 and +1,330 MiB. Measured: real photos stay under 2.4:1 (max 1.78 in
#: cpac-porcelain, 2.34 in clothing, 7,126 images); 360° panoramas are 2:1 to ~10:1;
#: handscrolls reach 21:1 (Along the River During the Qingming Festival, 24.8 x 528.7 cm)
#: and 38:1 (Kangxi's Southern Inspection Tour, 27 in x 85 ft); the Bayeux Tapestry,
#: 0.5 x 68.4 m, is 137:1. 200:1 embeds all of them. (Resizing only the region the centre
#: crop keeps, Pillow's ``resize(box=...)``, would avoid the intermediate, but Pillow holds
#: the box in float32: on 311 random sizes it changed 0.04 % of pixels by 1 level in the
#: median image and up to 31 % by up to 25 levels on long ones, so normal embeddings would move.)
DEFAULT_MAX_ASPECT = 200.0

_WHITE = (255, 255, 255)
_NOT_REGULAR = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
_BAD_CRC = re.compile(r"(?:bad header|incomplete) checksum in b'(\w{4})'")


class ImageLoadError(Exception):
    """An image that cannot be embedded; ``str(err)`` is the recorded reason."""


def _missing(path: str | os.PathLike, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if err.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symlink: it points to {os.readlink(path)!r}, which does not exist"
    if err.errno == errno.ENOENT:
        return "file not found"
    if err.errno == errno.ENOTDIR:
        return "file not found: a folder on its path is a file"
    return f"cannot read file: {(err.strerror or str(err)).lower()}"


def open_image_file(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading when it is a non-empty regular file; else :class:`ImageLoadError`.

    What ``path`` is comes from ``stat`` before anything is opened: opening a FIFO waits
    for a writer and opening a device can act on it. The open is non-blocking as well, so
    a FIFO swapped in after the check still cannot hang a worker.
    """
    try:
        info = os.stat(path)
    except OSError as err:
        raise ImageLoadError(_missing(path, err)) from None
    except ValueError as err:  # e.g. an embedded NUL byte
        raise ImageLoadError(f"invalid path: {err}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(info.st_mode)), "special file")
        raise ImageLoadError(f"not a regular file ({kind})")
    if info.st_size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
    except OSError as err:
        raise ImageLoadError(_missing(path, err)) from None


def check_size(width: int, height: int, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_aspect: float = DEFAULT_MAX_ASPECT, resize_to: int | None = None) -> None:
    """Refuse an image whose pixels, or whose short side resized to ``resize_to``, would not fit the caps."""
    if width * height > max_pixels:
        raise ImageLoadError(
            f"decompression bomb refused: {width}x{height} = {width * height:,} pixels "
            f"exceeds the limit of {max_pixels:,}"
        )
    short, long = sorted((width, height))
    if long > max_aspect * short:
        ratio = f"{long / short:,.1f}".removesuffix(".0")
        resized = (f"; resizing its short side to {resize_to} would make a {long * resize_to // short:,}x{resize_to} "
                   "image" if resize_to else "")
        raise ImageLoadError(f"aspect ratio {ratio}:1 ({width}x{height} pixels) exceeds the limit of "
                             f"{max_aspect:g}:1{resized}")


def _unidentified(fh: BinaryIO) -> str:
    """Why Pillow could not identify ``fh``: it says only "cannot identify image file", but the
    plugin whose signature the file carries, asked directly, names the damage."""
    fh.seek(0)
    prefix = fh.read(16)
    Image.init()
    for fmt, (factory, accept) in Image.OPEN.items():
        try:
            verdict = accept(prefix) if accept else False  # plugins without a signature test accept anything
        except Exception:  # a signature test that needs more bytes than the file has: not this format
            continue
        if isinstance(verdict, str):  # e.g. a format whose codec this Pillow was built without
            return f"unsupported image: {verdict}"
        if not verdict:
            continue
        fh.seek(0)
        try:
            factory(fh, "")
        except Exception as err:
            crc = _BAD_CRC.search(str(err))
            if crc:
                return f"damaged {fmt}: bad CRC in chunk {crc.group(1)}"
            return f"starts like a {fmt} file but cannot be opened: {err}"
    return "not an image (format not recognised)"


def _grey_from_numbers(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float pixels -> 8-bit grey: 16-bit over its full range,
    the others over the observed range. NaN or infinite pixels have no grey: refused."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            nan = int(np.isnan(arr).sum())
            raise ImageLoadError(f"image has NaN/inf values: {nan:,} NaN and {arr.size - int(finite.sum()) - nan:,} "
                                 f"inf among {arr.size:,} pixels")
        del finite
    if img.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0  # float64 scalars: no overflow for any float32 range
    grey = arr.astype(np.float32) * np.float32(scale)
    grey -= np.float32(lo * scale)
    return Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _grey_from_numbers(img).convert("RGB")
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
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> Image.Image:
    """Decode ``path`` to an upright RGB image.

    ``draft_size`` is the size the caller resizes the short side to; it lets JPEG
    decoding skip resolution it will not need: the decoder scales by 1/2, 1/4 or 1/8
    while both sides stay at least ``draft_size`` pixels. Images with more than
    ``max_pixels`` pixels (after draft scaling) or a long side more than ``max_aspect``
    times the short side are refused before decoding, so neither the decoded image nor
    its resized copy can be large.
    """
    with open_image_file(path) as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None  # checked below, after draft mode has shrunk a JPEG
                try:
                    with Image.open(fh) as img:
                        if draft_size and img.format == "JPEG":
                            img.draft("RGB", (draft_size, draft_size))
                        check_size(*img.size, max_pixels=max_pixels, max_aspect=max_aspect, resize_to=draft_size)
                        img.load()
                        ImageOps.exif_transpose(img, in_place=True)  # no copy when upright already
                        return _to_rgb(img)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
        except ImageLoadError:
            raise
        except UnidentifiedImageError:
            raise ImageLoadError(_unidentified(fh)) from None
        except OSError as err:
            msg = str(err)
            if err.errno is not None:  # the disk, not the data
                raise ImageLoadError(f"cannot read file: {(err.strerror or msg).lower()}") from None
            if "truncated" in msg:
                raise ImageLoadError(f"truncated image: {msg}") from None
            if "broken data stream" in msg:
                raise ImageLoadError(f"damaged image data: {msg}") from None
            raise ImageLoadError(f"cannot decode image: {msg}") from None
        except (ValueError, SyntaxError, EOFError, MemoryError) as err:
            raise ImageLoadError(f"cannot decode image: {type(err).__name__}: {err}") from None
