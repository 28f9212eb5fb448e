"""The GPU extraction path: JPEG bytes read by CPU workers, decoded in batches by nvjpeg.

Decoding is the known bottleneck of extraction (one CPU core decodes a few hundred
JPEGs/s; a GPU runs ResNet50 at thousands of img/s). Here the DataLoader workers only
read file bytes and peek at the header; the main process hands a whole batch of
JPEGs to ``torchvision.io.decode_jpeg(device="cuda")`` (one batched nvjpeg call),
then resizes and centre-crops each image on the GPU. Everything else — PNG, TIFF,
CMYK or EXIF-rotated JPEGs, images over the pixel ceiling, files that do not end
like a complete JPEG, and anything nvjpeg refuses — takes the CPU PIL path of
:class:`featkit.extract.decode.ImageDataset`, so failures are recorded with exactly the
same reasons as on the CPU path. Pixels decoded on the CPU travel in pinned memory
with non-blocking copies.

The same code runs with ``device="cpu"`` (libjpeg through torchvision), which is
how the tests check the routing and the failure records without a GPU.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from featkit.backbones.preprocess import Preprocess
from featkit.data.images import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, check_size, open_image_file
from featkit.extract.decode import ImageDataset

_EXIF_ORIENTATION = 0x0112
_NVJPEG_MODES = ("RGB", "L")  # YCbCr and greyscale JPEGs; CMYK goes through PIL
Batch = tuple[torch.Tensor, torch.Tensor, list[str]]  # positions, uint8 images on the device, errors


@dataclass(frozen=True)
class DecodeSpec:
    """How a decoded image becomes the uint8 square the backbone (or TTA) expects."""

    resize_size: int
    size: int  # centre crop side
    interpolation: str = "bilinear"

    @classmethod
    def of(cls, pre: Preprocess, size: int | None = None) -> "DecodeSpec":
        return cls(resize_size=pre.resize_size, size=size or pre.crop_size, interpolation=pre.interpolation)


def gpu_decode_wanted(setting: bool | None, device: torch.device) -> bool:
    """``--gpu-decode`` auto (None) means: on when extracting on CUDA."""
    return device.type == "cuda" if setting is None else bool(setting)


def jpeg_bytes(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_aspect: float = DEFAULT_MAX_ASPECT) -> torch.Tensor | None:
    """The file's bytes when nvjpeg can decode it exactly as PIL would; else None (use PIL).

    Reads the header only (no pixel decoding) of a regular file (never opens a FIFO or
    device): baseline/progressive YCbCr or greyscale JPEG, no EXIF rotation, within the
    pixel and aspect-ratio ceilings, ending with the EOI marker.
    """
    try:
        with open_image_file(path) as fh, Image.open(fh) as img:
            if img.format != "JPEG" or img.mode not in _NVJPEG_MODES:
                return None
            check_size(img.width, img.height, max_pixels=max_pixels, max_aspect=max_aspect)
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                return None
            fh.seek(0)
            data = fh.read()
    except Exception:  # unreadable, not an image or over a ceiling: PIL gives the reason
        return None
    if not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):  # truncated: let PIL say so
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class EncodedDataset(Dataset):
    """(position, JPEG bytes or None, uint8 pixels or None, error) per image; never raises."""

    def __init__(self, paths: Sequence[str], fallback: ImageDataset) -> None:
        self.paths = list(paths)
        self.fallback = fallback

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        data = jpeg_bytes(self.paths[i], max_pixels=self.fallback.max_pixels, max_aspect=self.fallback.max_aspect)
        if data is not None:
            return i, data, None, ""
        _, pixels, error = self.fallback[i]
        return i, None, pixels, error


def collate_encoded(items: list) -> tuple:
    """(positions, JPEG byte tensors, their batch slots, CPU-decoded pixels, their slots, errors)."""
    positions = torch.tensor([it[0] for it in items], dtype=torch.int64)
    enc_slots = [j for j, it in enumerate(items) if it[1] is not None]
    pix_slots = [j for j, it in enumerate(items) if it[1] is None]
    encoded = [items[j][1] for j in enc_slots]
    pixels = torch.stack([items[j][2] for j in pix_slots]) if pix_slots else torch.zeros(0, dtype=torch.uint8)
    return positions, encoded, enc_slots, pixels, pix_slots, [it[3] for it in items]


def decode_resize(encoded: list[torch.Tensor], spec: DecodeSpec, device: torch.device) -> list[torch.Tensor | None]:
    """Batched JPEG decode on ``device``, then resize + centre crop; None where decoding failed."""
    if not encoded:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its image I/O as deprecated
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: retry one by one
            images = []
            for data in encoded:
                try:
                    images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
    return resize_crop(images, spec)


def resize_crop(images: list[torch.Tensor | None], spec: DecodeSpec) -> list[torch.Tensor | None]:
    """Resize the shorter side and centre-crop; images of one size go through in one call."""
    out: list[torch.Tensor | None] = [None] * len(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for j, img in enumerate(images):
        if img is not None:
            by_size.setdefault(tuple(img.shape), []).append(j)
    interpolation = InterpolationMode(spec.interpolation)
    for slots in by_size.values():
        stack = torch.stack([images[j] for j in slots])
        stack = F.resize(stack, [spec.resize_size], interpolation=interpolation, antialias=True)
        for j, img in zip(slots, F.center_crop(stack, [spec.size, spec.size])):
            out[j] = img
    return out


def assemble(batch: tuple, spec: DecodeSpec, device: torch.device, fallback: ImageDataset) -> Batch:
    """One collated batch -> (positions, uint8 images (B, 3, size, size) on ``device``, errors)."""
    positions, encoded, enc_slots, pixels, pix_slots, errors = batch
    errors = list(errors)
    images = torch.zeros(len(positions), 3, spec.size, spec.size, dtype=torch.uint8, device=device)
    if pix_slots:
        images[pix_slots] = pixels.to(device, non_blocking=True)
    for slot, img in zip(enc_slots, decode_resize(encoded, spec, device)):
        if img is None:  # nvjpeg refused it: PIL decodes it or records why not
            _, img, errors[slot] = fallback[int(positions[slot])]
            img = img.to(device)
        images[slot] = img
    return positions, images, errors


def gpu_batches(paths: Sequence[str], *, preprocess: Preprocess, size: int, fallback: ImageDataset,
                batch_size: int, workers: int, device: torch.device) -> Iterator[Batch]:
    """(positions, uint8 images on ``device``, errors) per batch, like the CPU loader's batches."""
    spec = DecodeSpec.of(preprocess, size)
    loader = DataLoader(EncodedDataset(paths, fallback), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate_encoded, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    yield from prefetched((assemble(batch, spec, device, fallback) for batch in loader), device)


def prefetched(batches: Iterator[Batch], device: torch.device, *, depth: int = 2) -> Iterator[Batch]:
    """Run ``batches`` ahead in a thread (on its own CUDA stream), so the next batch is read,
    decoded and resized while the network runs the current one (whose ``.cpu()`` blocks)."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for batch in batches:
                    ready = None
                    if stream is not None:
                        ready = torch.cuda.Event()
                        ready.record(stream)
                    if not put((batch, ready)):
                        return
            put((_DONE, None))
        except BaseException as err:  # handed to the consumer, raised there
            put((err, None))

    thread = threading.Thread(target=produce, name="featkit-decode", daemon=True)
    thread.start()
    try:
        while True:
            batch, ready = slots.get()
            if batch is _DONE:
                return
            if isinstance(batch, BaseException):
                raise batch
            if ready is not None:  # the images were made on the decode stream
                current = torch.cuda.current_stream(device)
                current.wait_event(ready)
                batch[1].record_stream(current)
            yield batch
    finally:
        stop.set()
        thread.join(timeout=5)


_DONE = object()

