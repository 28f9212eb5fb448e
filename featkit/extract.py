"""Embed every image of a collection with a backbone and cache the rows in the store.

Batches flow through a DataLoader with workers (robust PIL decoding, JPEG draft
mode, uint8 tensors between processes), are normalised on the device, run with
channels_last and bf16/fp16 autocast where the hardware has it, and are written
to the store's log batch by batch, addressed by image id. Re-running computes only
rows that are not done; failures are recorded, never fatal.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from featkit import __version__
from featkit.backbones import Backbone, create_backbone
from featkit.data.images import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from featkit.data.manifest import Collection
from featkit.errors import FeatkitError, choices_message
from featkit.store import FeatureStore, GroupMeta
from featkit.tta import TTA, create_tta

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("local", "ray")
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ExtractSettings:
    """How to run extraction; every field has a CLI flag."""

    batch_size: int = 32
    workers: int | None = None  # None: auto (cores on CPU, more on GPU)
    device: str = "auto"
    precision: str = "auto"
    limit: int | None = None
    retry_failed: bool = False
    channels_last: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT  # long side / short side; beyond it an image is a recorded failure
    storage_dtype: str = "float32"
    progress: bool = True
    checkpoint_seconds: float = 300.0
    engine: str = "local"  # or "ray" (featkit.distributed)
    address: str | None = None  # Ray cluster address (None: start a local one)
    tta: str = "none"  # featkit.tta mode; rows go to variant "<weights>+tta-<mode>"
    compile: bool = False  # torch.compile the backbone
    gpu_decode: bool | None = None  # featkit.gpu nvjpeg path; None: on when extracting on CUDA

    def validate(self) -> None:
        if self.batch_size < 1:
            raise FeatkitError(f"batch size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise FeatkitError(f"workers must be 0 or more, got {self.workers}")
        if self.precision not in PRECISIONS:
            raise FeatkitError(choices_message("precision", self.precision, PRECISIONS))
        if self.device.split(":")[0] not in DEVICES:
            raise FeatkitError(choices_message("device", self.device, DEVICES))
        if self.limit is not None and self.limit < 0:
            raise FeatkitError(f"limit must be 0 or more, got {self.limit}")
        if self.max_aspect < 1:
            raise FeatkitError(f"max aspect must be at least 1 (a square), got {self.max_aspect}")
        if self.storage_dtype not in ("float32", "float16"):
            raise FeatkitError(choices_message("storage dtype", self.storage_dtype, ("float32", "float16")))
        if self.engine not in ENGINES:
            raise FeatkitError(choices_message("engine", self.engine, ENGINES))
        if self.address and self.engine != "ray":
            raise FeatkitError(f"--address {self.address!r} is for the Ray engine; add --engine ray")
        create_tta(self.tta)


@dataclass
class ExtractSummary:
    key: str
    store: str
    total: int
    already_done: int
    computed: int
    failed: int
    skipped_failed: int
    remaining: int
    seconds: float
    images_per_s: float
    device: str
    precision: str
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["failures"] = [{"id": i, "error": e} for i, e in self.failures]
        return out


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatkitError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 autocast is fast on this CPU."""
    probe = getattr(torch.backends.cpu, "get_cpu_capability", None)
    if probe is not None and probe() in ("AVX512_BF16", "AMX"):  # not all builds report this
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise FeatkitError("fp16 autocast is for GPUs; use --precision bf16 or fp32 on the CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def default_workers(device: torch.device) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(cores - 1, 16))
    return max(1, min(cores, 8))


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


def prepare_model(backbone: Backbone, device: torch.device, channels_last: bool, *,
                  precision: str = "fp32") -> torch.nn.Module:
    """The network to run: on ``device``, eval mode, BatchNorm folded into the convolutions, channels_last.

    Folding (:func:`featkit.backbones.fold.fold_batchnorm`; ``backbone`` still computes what it did)
    removes one memory-bound pass per BatchNorm; on CPU it nearly halves MobileNetV2's time. The
    outputs are the same up to float rounding. With ``precision`` bf16/fp16 (run under
    :func:`autocast`) the convolutions hold weights of that type already, as autocast would cast
    them (:func:`~featkit.backbones.fold.cast_convolutions`). A network fx cannot trace runs as it is.
    """
    from featkit.backbones.fold import cast_convolutions, fold_batchnorm

    model = backbone.to(device).eval()
    try:
        model = fold_batchnorm(model)
        if precision in ("bf16", "fp16"):
            model = cast_convolutions(model, torch.bfloat16 if precision == "bf16" else torch.float16)
    except Exception:  # a plug-in backbone with data-dependent control flow: run it as it is
        pass
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def embed_batch(model: torch.nn.Module, batch: torch.Tensor, backbone: Backbone, *, device: torch.device,
                precision: str, channels_last: bool, tta: TTA | None = None) -> np.ndarray:
    """uint8 images (B, 3, H, W) -> float32 embeddings (B, dim) as numpy (TTA views averaged)."""
    x = batch.to(device, non_blocking=True)
    x = backbone.preprocess.normalize(x)
    if tta is not None and tta.n_views > 1:
        with torch.inference_mode(), autocast(device, precision):
            out = tta.embed(model, x, backbone.preprocess.crop_size, channels_last=channels_last)
        return out.cpu().numpy()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, precision):
        out = model(x)
    return out.float().cpu().numpy()


def group_meta(backbone: Backbone, variant: str, settings: ExtractSettings, extra: dict | None = None) -> GroupMeta:
    return GroupMeta(
        backbone=backbone.name,
        variant=variant,
        weights=backbone.weights,
        weights_sha256=backbone.weights_sha256,
        preprocess=backbone.preprocess.to_dict(),
        preprocess_fingerprint=backbone.preprocess.fingerprint,
        dim=backbone.dim,
        dtype=settings.storage_dtype,
        extra={"featkit_version": __version__, **(extra or {})},
    )


def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn)

    class Rate(TextColumn):
        def render(self, task):  # images per second
            speed = task.finished_speed or task.speed
            return super().render(task) if speed is None else f"{speed:,.1f} img/s"

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    Rate(""), TimeRemainingColumn(), transient=False)


def extract(
    collection: Collection,
    backbone: str | Backbone,
    *,
    store: FeatureStore,
    weights: str | None = None,
    variant: str | None = None,
    settings: ExtractSettings = ExtractSettings(),
) -> ExtractSummary:
    """Cache embeddings of every image of ``collection`` in ``store``; resume what is done."""
    settings.validate()
    run = _run
    if settings.engine == "ray":  # the cluster's device, not the driver's
        from featkit.distributed import ray_device, run_ray as run

        device, precision = ray_device(settings)
    else:
        device = resolve_device(settings.device)
        precision = resolve_precision(settings.precision, device)
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, weights=weights)
    tta = create_tta(settings.tta)
    variant = tta.variant(variant or backbone.variant)
    key = f"{backbone.name}/{variant}"
    meta = group_meta(backbone, variant, settings, {"manifest_hash": collection.manifest_hash,
                                                    **({"tta": tta.name} if tta.n_views > 1 else {})})
    start = time.perf_counter()
    with store.writer() as writer:
        writer.checkpoint_seconds = settings.checkpoint_seconds
        writer.ensure_group(meta, list(collection.ids))
        status = store.status(key)
        done = dict(zip(status["ids"], status["done"]))
        old_failures = status["failures"]
        already = sum(1 for i in collection.ids if done.get(i))
        pending = [
            i for i in collection.ids
            if not done.get(i) and (settings.retry_failed or i not in old_failures)
        ]
        skipped_failed = sum(1 for i in collection.ids if not done.get(i) and i in old_failures) if not settings.retry_failed else 0
        if settings.limit is not None:
            pending = pending[: settings.limit]
        del status, done  # per-id structures: not held while extracting (memory stays flat)
        computed, failures = run(collection, backbone, key, pending, writer, device, precision, settings)
    seconds = time.perf_counter() - start
    final = store.status(key)
    final_done = set(final["ids"][final["done"]])
    remaining = sum(1 for i in collection.ids if i not in final_done and i not in final["failures"])
    return ExtractSummary(
        key=key, store=str(store.path), total=len(collection), already_done=already, computed=computed,
        failed=len(failures), skipped_failed=skipped_failed, remaining=remaining, seconds=round(seconds, 3),
        images_per_s=round((computed + len(failures)) / seconds, 2) if seconds > 0 else 0.0,
        device=str(device), precision=precision, failures=failures,
    )


def _run(collection: Collection, backbone: Backbone, key: str, pending: list[str], writer, device: torch.device,
         precision: str, settings: ExtractSettings) -> tuple[int, list[tuple[str, str]]]:
    if not pending:
        return 0, []
    pre, tta = backbone.preprocess, create_tta(settings.tta)
    paths = [str(collection.path(i)) for i in pending]
    dataset = ImageDataset(paths, tta.image_transform(pre), tta.input_size(pre),
                           draft_size=pre.resize_size, max_pixels=settings.max_pixels, max_aspect=settings.max_aspect)
    workers = default_workers(device) if settings.workers is None else settings.workers
    from featkit import gpu

    if gpu.gpu_decode_wanted(settings.gpu_decode, device):  # JPEG bytes -> nvjpeg; the rest via dataset
        loader = gpu.gpu_batches(paths, preprocess=pre, size=tta.input_size(pre), fallback=dataset,
                                 batch_size=settings.batch_size, workers=workers, device=device)
    else:
        loader = make_loader(dataset, batch_size=settings.batch_size, workers=workers, device=device)
    batches = iter(loader)  # workers start decoding now, while the model is prepared
    model = prepare_model(backbone, device, settings.channels_last, precision=precision)
    steady_heap()
    if settings.compile:
        model = torch.compile(model)
    computed, failures = 0, []
    with _progress(settings.progress, len(pending), key) as progress:
        task = progress.add_task(f"extract {key}", total=len(pending)) if progress else None
        for positions, images, errors in batches:
            positions = positions.tolist()
            ok = [j for j, e in enumerate(errors) if not e]
            bad = [(pending[positions[j]], errors[j]) for j, e in enumerate(errors) if e]
            feats = np.zeros((0, backbone.dim), np.float32)
            if ok:
                try:
                    feats = embed_batch(model, images[ok], backbone, device=device, precision=precision,
                                        channels_last=settings.channels_last, tta=tta)
                except torch.cuda.OutOfMemoryError:
                    raise FeatkitError(
                        f"out of GPU memory at batch size {settings.batch_size} with {key}; rows done so far are "
                        f"saved — rerun with a smaller --batch-size (e.g. {max(1, settings.batch_size // 2)})"
                    ) from None
            writer.write_rows(key, [pending[positions[j]] for j in ok], feats, bad)
            computed += len(ok)
            failures.extend(bad)
            if progress:
                progress.update(task, advance=len(positions))
    return computed, failures
