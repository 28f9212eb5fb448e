"""Labels as class indices, augmentations, and batches of uint8 images for training.

Images are decoded once per epoch (or once per run with the in-memory cache) with
the spine's robust loader, resized so the shorter side is the backbone's resize
size, and kept as uint8 tensors; the per-batch augmentations (torchvision v2) run on
those, and normalisation happens on the device. An undecodable image is a recorded
failure whose labels are masked, never a crash.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from featkit.backbones import Preprocess
from featkit.data.manifest import Manifest
from featkit.errors import FeatkitError
from featkit.extract.decode import ImageDataset, default_workers
from featkit.finetune.model import IGNORE
from featkit.finetune.settings import Augment

CACHE_LIMIT_BYTES = 2 << 30


def encode_targets(collection: Manifest, tasks: Sequence[str]) -> tuple[dict[str, tuple[str, ...]], np.ndarray]:
    """Classes per task (sorted) and an (n, tasks) int64 array of class indices, IGNORE where unknown."""
    classes: dict[str, tuple[str, ...]] = {}
    targets = np.full((len(collection), len(tasks)), IGNORE, dtype=np.int64)
    for j, task in enumerate(tasks):
        labels = collection.task_labels(task)  # unknown task -> error naming the valid ones
        known = np.array([v is not None for v in labels])
        names = tuple(sorted({str(v) for v in labels[known]}))
        if len(names) < 2:
            only = f" ({names[0]!r} on all {int(known.sum())} labelled images)" if names else " (no labelled image)"
            raise FeatkitError(f"task {task!r} has {len(names)} class{only}; a classifier needs at least two")
        index = {name: i for i, name in enumerate(names)}
        targets[known, j] = [index[str(v)] for v in labels[known]]
        classes[task] = names
    return classes, targets


def decode_transform(pre: Preprocess) -> v2.Compose:
    """PIL -> uint8 tensor whose shorter side is the resize size (what the cache holds)."""
    return v2.Compose([v2.Resize(pre.resize_size, interpolation=InterpolationMode(pre.interpolation), antialias=True),
                       v2.PILToTensor()])


def train_transform(pre: Preprocess, augment: Augment) -> v2.Compose:
    """uint8 tensor -> augmented uint8 (3, crop, crop)."""
    steps: list = [
        v2.RandomResizedCrop(pre.crop_size, scale=augment.crop_scale, antialias=True,
                             interpolation=InterpolationMode(pre.interpolation))
        if augment.crop else v2.CenterCrop(pre.crop_size)
    ]
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.rotation > 0:
        steps.append(v2.RandomRotation(augment.rotation))
    if augment.jitter > 0:
        j = augment.jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
    if augment.erasing > 0:
        steps.append(v2.RandomErasing(p=augment.erasing))
    return v2.Compose(steps)


def eval_transform(pre: Preprocess) -> v2.Compose:
    return v2.Compose([v2.CenterCrop(pre.crop_size)])


def _as_list(batch):
    return batch


class AugmentedImages(Dataset):
    """(position, uint8 image, error) for ``rows``, from a decoder or a decoded cache."""

    def __init__(self, decoded: ImageDataset | list, transform: v2.Compose) -> None:
        self.decoded = decoded
        self.transform = transform

    def __len__(self) -> int:
        return len(self.decoded)

    def __getitem__(self, i: int):
        _, image, error = self.decoded[i]
        return i, self.transform(image), error


class ImageSource:
    """Every image a run needs, decoded lazily or cached in memory once."""

    def __init__(self, collection: Manifest, rows: np.ndarray, pre: Preprocess, *, cache: bool | None,
                 workers: int, device: torch.device) -> None:
        self.rows = np.asarray(rows)
        self.pre = pre
        self.workers = workers
        self.device = device
        paths = [str(collection.path(collection.ids[r])) for r in self.rows]
        self.decoder = ImageDataset(paths, decode_transform(pre), pre.crop_size, draft_size=pre.resize_size)
        estimate = len(paths) * 3 * pre.resize_size * pre.resize_size * 4 // 3
        self.cache_wanted = estimate < CACHE_LIMIT_BYTES if cache is None else cache
        self._cache: list | None = None
        self._where = {int(r): i for i, r in enumerate(self.rows)}

    def preload(self, progress=None) -> None:
        """Decode every image once (in parallel) and keep the uint8 tensors."""
        if not self.cache_wanted or self._cache is not None:
            return
        loader = DataLoader(self.decoder, batch_size=32, num_workers=self.workers, collate_fn=_as_list)
        task = progress.add_task("decode images", total=len(self.decoder), info="") if progress else None
        cache: list = []
        for batch in loader:
            cache.extend(batch)
            if progress:
                progress.update(task, advance=len(batch))
        if progress:
            progress.remove_task(task)
        self._cache = cache

    def subset(self, rows: np.ndarray):
        where = [self._where[int(r)] for r in rows]
        if self._cache is not None:
            return [self._cache[i] for i in where]
        return ImageDataset([self.decoder.paths[i] for i in where], self.decoder.transform, self.pre.crop_size,
                            draft_size=self.pre.resize_size)

    def loader(self, rows: np.ndarray, transform: v2.Compose, *, batch_size: int, shuffle: bool,
               seed: int = 0) -> DataLoader:
        dataset = AugmentedImages(self.subset(rows), transform)
        workers = 0 if self._cache is not None and self.device.type == "cpu" else self.workers
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          num_workers=workers, pin_memory=self.device.type == "cuda",
                          drop_last=shuffle and len(dataset) > batch_size,
                          prefetch_factor=4 if workers else None, persistent_workers=False)


def auto_workers(workers: int | None, device: torch.device) -> int:
    return default_workers(device) if workers is None else workers


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch's global generator for one epoch (dropout, augmentation), restore it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
