"""Decoding images for the network: robust PIL decoding in DataLoader workers, uint8 batches.

Every image becomes a uint8 tensor (cheap to pass between processes) or a recorded
reason; the worker processes run niced on the CPU so decoding never preempts the
network. Used by every extraction path (local engine, Ray decode tasks, the GPU path's
fallback) and by fine-tuning.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from featkit.data.images import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, ImageLoadError, load_image

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


class ImageDataset(Dataset):
    """(position, uint8 tensor, error) per image; errors are returned, never raised."""

    def __init__(self, paths: Sequence[str], transform: Callable, crop_size: int, *,
                 draft_size: int | None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_aspect: float = DEFAULT_MAX_ASPECT) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.crop_size = crop_size
        self.draft_size = draft_size
        self.max_pixels = max_pixels
        self.max_aspect = max_aspect

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.paths[i], draft_size=self.draft_size, max_pixels=self.max_pixels,
                             max_aspect=self.max_aspect)
            return i, self.transform(img), ""
        except ImageLoadError as err:
            error = str(err)
        except Exception as err:  # any other decoder failure is still a recorded failure
            error = f"cannot decode image: {type(err).__name__}: {err}"
        return i, torch.zeros(3, self.crop_size, self.crop_size, dtype=torch.uint8), error


def default_workers(device: torch.device) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(cores - 1, 16))
    return max(1, min(cores, 8))


def _yield_to_the_network(worker_id: int) -> None:
    """On CPU the network is the bottleneck and decoding has slack: decoders run at lower priority,
    so they stop preempting its threads (2 cores, MobileNetV2 bf16: +3-20 % images/s, every round)."""
    if hasattr(os, "nice"):
        os.nice(10)


def make_loader(dataset: ImageDataset, *, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        worker_init_fn=_yield_to_the_network if workers and device.type == "cpu" else None,
    )


@functools.cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return None


def steady_heap() -> None:
    """Keep glibc from holding on to freed batch buffers (RSS stays flat with collection size).

    glibc raises its mmap threshold each time a large mmapped block is freed; batches
    arriving from DataLoader workers (or Ray) then come from the heap, whose freed
    space is rarely given back: RSS crept up ~175 MiB over 20k images though nothing
    was held (benchmarks/bench_memory.py). Pinning the threshold at glibc's default
    128 KiB (``M_MMAP_THRESHOLD``) keeps every batch-sized buffer mmapped, returned to
    the OS when freed. Process-wide and harmless; a no-op off glibc.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
