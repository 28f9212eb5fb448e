"""The one extraction runtime: a prepared backbone embeds a stream of images, yielding batches.

:class:`Embedder` holds a backbone ready to run — the engine that runs it (a registry:
:mod:`featkit.extract.engines`), the device and precision, the TTA views, the decode
path — and :meth:`Embedder.embed` turns ``(ids, paths)`` into :class:`EmbeddedBatch` es
of ids, float32 features and failures. ``featkit extract`` writes what it yields to the
store (:mod:`featkit.extract.cache`); ``featkit predict``, similarity search by upload
and fine-tuning probes keep it in memory. Every engine prepares the network the same
way (:func:`prepare_model`: eval mode, BatchNorm folded, weights cast once, channels_last,
optionally compiled) and embeds a decoded batch with the same :func:`embed_batch`, so a
row never depends on which path made it.

On the local engine, batches flow through a DataLoader with workers (robust PIL
decoding, JPEG draft mode, uint8 tensors between processes) or, on CUDA, through
nvjpeg (:mod:`featkit.extract.gpu`); they are normalised on the device and run with
channels_last and bf16/fp16 autocast where the hardware has it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from featkit.backbones.model import Backbone
from featkit.errors import FeatkitError
from featkit.extract.decode import ImageDataset, default_workers, make_loader, steady_heap
from featkit.extract.engines import create_engine
from featkit.extract.settings import ExtractSettings
from featkit.extract.tta import TTA, create_tta


@dataclass
class EmbeddedBatch:
    """What one batch gave: embedded ``ids`` with their ``features`` rows, and ``(id, reason)`` failures."""

    ids: np.ndarray
    features: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids) + len(self.failures)


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


def prepare_model(backbone: Backbone, device: torch.device, channels_last: bool, *,
                  precision: str = "fp32", compile: bool = False) -> torch.nn.Module:
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
    if compile:
        model = torch.compile(model)
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


def decoder(paths: Sequence[str], backbone: Backbone, settings: ExtractSettings) -> ImageDataset:
    """The PIL decoder for ``paths`` as ``settings`` (TTA input size, pixel ceiling) and the backbone ask."""
    pre, tta = backbone.preprocess, create_tta(settings.tta)
    return ImageDataset(list(paths), tta.image_transform(pre), tta.input_size(pre), draft_size=pre.resize_size,
                        max_pixels=settings.max_pixels, max_aspect=settings.max_aspect)


def split_batch(ids: np.ndarray, positions, errors, features_of, dim: int) -> EmbeddedBatch:
    """An :class:`EmbeddedBatch` from one decoded batch: ``features_of(ok slots)`` embeds the decoded ones."""
    errors = list(errors)
    positions = np.asarray(positions, dtype=np.int64)
    ok = [j for j, e in enumerate(errors) if not e]
    bad = [(str(ids[positions[j]]), str(errors[j])) for j, e in enumerate(errors) if e]
    feats = features_of(ok) if ok else np.zeros((0, dim), np.float32)
    return EmbeddedBatch(ids=ids[positions[ok]], features=feats, failures=bad)


class Engine:
    """Where the backbone runs. ``placement`` says on what; ``embed`` yields batches."""

    def placement(self, settings: ExtractSettings) -> tuple[torch.device, str]:
        device = resolve_device(settings.device)
        return device, resolve_precision(settings.precision, device)

    def embed(self, ids: np.ndarray, paths: Sequence[str], backbone: Backbone, settings: ExtractSettings, *,
              device: torch.device, precision: str) -> Iterator[EmbeddedBatch]:
        raise NotImplementedError


class LocalEngine(Engine):
    """This process: DataLoader workers decode (or nvjpeg on CUDA), the backbone runs on one device."""

    def embed(self, ids, paths, backbone, settings, *, device, precision):
        from featkit.extract import gpu

        tta = create_tta(settings.tta)
        dataset = decoder(paths, backbone, settings)
        workers = default_workers(device) if settings.workers is None else settings.workers
        workers = min(workers, -(-len(paths) // settings.batch_size))  # no more workers than batches
        if gpu.gpu_decode_wanted(settings.gpu_decode, device):  # JPEG bytes -> nvjpeg; the rest via dataset
            loader = gpu.gpu_batches(dataset.paths, preprocess=backbone.preprocess,
                                     size=tta.input_size(backbone.preprocess), fallback=dataset,
                                     batch_size=settings.batch_size, workers=workers, device=device)
        else:
            loader = make_loader(dataset, batch_size=settings.batch_size, workers=workers, device=device)
        batches = iter(loader)  # workers start decoding now, while the model is prepared
        model = prepare_model(backbone, device, settings.channels_last, precision=precision,
                              compile=settings.compile)
        steady_heap()
        for positions, images, errors in batches:
            def features(ok: list[int]) -> np.ndarray:
                try:
                    return embed_batch(model, images[ok], backbone, device=device, precision=precision,
                                       channels_last=settings.channels_last, tta=tta)
                except torch.cuda.OutOfMemoryError:
                    raise FeatkitError(
                        f"out of GPU memory at batch size {settings.batch_size} with {backbone.name}; rows done so "
                        f"far are saved — rerun with a smaller --batch-size (e.g. {max(1, settings.batch_size // 2)})"
                    ) from None

            yield split_batch(ids, positions.tolist(), errors, features, backbone.dim)


@dataclass
class Embedder:
    """A backbone ready to embed images with ``settings``: its engine, device, precision and TTA views."""

    backbone: Backbone
    settings: ExtractSettings
    engine: Engine
    device: torch.device
    precision: str

    @classmethod
    def prepare(cls, backbone: Backbone, settings: ExtractSettings = ExtractSettings()) -> "Embedder":
        settings.validate()
        engine = create_engine(settings.engine)
        device, precision = engine.placement(settings)
        return cls(backbone=backbone, settings=settings, engine=engine, device=device, precision=precision)

    def embed(self, ids: Sequence[str], paths: Sequence[str]) -> Iterator[EmbeddedBatch]:
        """Batches of (ids, features, failures) for ``paths`` (named by ``ids``), in order; never raises for an image."""
        ids = np.asarray(ids, dtype=str)
        if len(ids) != len(paths):
            raise FeatkitError(f"embed got {len(ids)} ids but {len(paths)} paths")
        if not len(ids):
            return iter(())
        return self.engine.embed(ids, [str(p) for p in paths], self.backbone, self.settings, device=self.device,
                                 precision=self.precision)


def progress_bar(enabled: bool):
    """A rich progress bar in images per second (a no-op context when disabled)."""
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class Rate(TextColumn):
        def render(self, task):  # images per second
            speed = task.finished_speed or task.speed
            return super().render(task) if speed is None else f"{speed:,.1f} img/s"

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    Rate(""), TimeRemainingColumn(), transient=False)
