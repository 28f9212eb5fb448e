"""The Ray Data engine (``pip install 'featkit[ray]'``): decode in tasks, embed in actors.

Registered as engine ``ray`` (:mod:`featkit.extract.engines`). The images become a Ray
Dataset of (position, path) rows; ``map_batches`` tasks decode them with the same
robust PIL code as the local engine (:class:`featkit.extract.decode.ImageDataset`), and a
fixed pool of ``map_batches`` actors (``ActorPoolStrategy``; one per GPU with
``num_gpus=1`` when the cluster has GPUs) prepares the backbone and embeds with the same
:func:`~featkit.extract.runtime.prepare_model` and
:func:`~featkit.extract.runtime.embed_batch`. Batches stream back to the driver with
``iter_batches`` as :class:`~featkit.extract.runtime.EmbeddedBatch` es; the driver is the
only store writer, so ids, done flags and failures are recorded exactly as by the local
engine.

On a multi-node cluster every node must see the images at the same paths (a shared
filesystem); the store stays on the driver.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from featkit.backbones.model import Backbone
from featkit.errors import FeatkitError
from featkit.extract.decode import ImageDataset, steady_heap
from featkit.extract.runtime import Engine, embed_batch, prepare_model, resolve_precision, split_batch
from featkit.extract.settings import ExtractSettings
from featkit.extract.tta import create_tta


def _ray():
    try:
        import ray
    except ImportError:
        raise FeatkitError("the ray engine needs Ray: pip install 'featkit[ray]'") from None
    return ray


def connect(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or start a local one) unless Ray is already up."""
    ray = _ray()
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning")
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise FeatkitError(f"cannot start or reach a Ray cluster at {address or '(local)'}: {err}") from None


def _cluster_gpus() -> int:
    return int(_ray().cluster_resources().get("GPU", 0))


def ray_device(settings: ExtractSettings) -> tuple[torch.device, str]:
    """The device and precision the actors will use, as the cluster offers them."""
    connect(settings.address)
    gpus = _cluster_gpus()
    if settings.device.startswith("cuda") and not gpus:
        raise FeatkitError(f"device {settings.device!r} asked for, but the Ray cluster has no GPUs; use --device cpu")
    device = torch.device("cuda" if settings.device != "cpu" and gpus else "cpu")
    if settings.precision != "auto" or device.type == "cpu":
        return device, resolve_precision(settings.precision, device)
    probe = _ray().remote(num_gpus=1)(lambda: resolve_precision("auto", torch.device("cuda")))
    return device, _ray().get(probe.remote())


def _decode(batch: dict, *, transform, size: int, draft_size: int, max_pixels: int, max_aspect: float) -> dict:
    """Ray task: paths -> uint8 images and error strings (empty when decoded)."""
    dataset = ImageDataset(list(batch["path"]), transform, size, draft_size=draft_size, max_pixels=max_pixels,
                           max_aspect=max_aspect)
    items = [dataset[i] for i in range(len(dataset))]
    return {
        "position": np.asarray(batch["position"], dtype=np.int64),
        "image": np.stack([img.numpy() for _, img, _ in items]) if items else np.zeros((0, 3, size, size), np.uint8),
        "error": np.array([err for _, _, err in items], dtype=object),
    }


class _Embedder:
    """Ray actor: holds the backbone on its device and embeds decoded batches."""

    def __init__(self, backbone: Backbone, *, device: str, precision: str, channels_last: bool, tta: str,
                 compile: bool) -> None:
        self.device = torch.device(device)
        self.backbone = backbone
        self.precision = precision
        self.channels_last = channels_last
        self.tta = create_tta(tta)
        self.model = prepare_model(backbone, self.device, channels_last, precision=precision, compile=compile)

    def __call__(self, batch: dict) -> dict:
        errors = np.asarray(batch["error"], dtype=object)
        ok = np.flatnonzero(errors == "")
        feats = np.zeros((len(errors), self.backbone.dim), np.float32)
        if len(ok):
            images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))
            if self.device.type == "cuda":
                images = images.pin_memory()
            feats[ok] = embed_batch(self.model, images, self.backbone, device=self.device, precision=self.precision,
                                    channels_last=self.channels_last, tta=self.tta)
        return {"position": batch["position"], "features": feats, "error": errors}


def _dataset(paths: list[str], block_rows: int):
    """(position, path) rows in blocks of ``block_rows`` (the unit of parallel decoding)."""
    frames = [pd.DataFrame({"position": np.arange(s, min(s + block_rows, len(paths)), dtype=np.int64),
                            "path": paths[s : s + block_rows]}) for s in range(0, len(paths), block_rows)]
    return _ray().data.from_pandas(frames)


class RayEngine(Engine):
    """Decoding tasks and one embedding actor per GPU (or half the CPUs) on a Ray cluster."""

    def placement(self, settings: ExtractSettings) -> tuple[torch.device, str]:
        return ray_device(settings)

    def embed(self, ids, paths, backbone, settings, *, device, precision):
        ray = _ray()
        connect(settings.address)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # featkit shows its own
        ctx.print_on_execution_start = False
        pre, tta = backbone.preprocess, create_tta(settings.tta)
        gpus = _cluster_gpus() if device.type == "cuda" else 0
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = gpus or max(1, cpus // 2)  # one per GPU; on CPUs, leave half the cores to decoding
        # blocks of whole batches, about four per CPU, so every core has decoding to do
        block_rows = max(settings.batch_size, min(16 * settings.batch_size, -(-len(paths) // (4 * cpus))))
        ds = _dataset(list(paths), block_rows)
        # Each decoding task reserves what its worker uses: the interpreter with torch and PIL
        # (Ray measured ~470 MiB RSS and asks for 25% headroom) and a batch of draft-decoded
        # images (JPEG draft mode keeps them under twice the resize side). Having its own
        # resource request also keeps Ray from fusing decoding into the actors: decoding runs
        # in CPU tasks beside them.
        decode_bytes = 600 * 2**20 + settings.batch_size * 3 * (2 * max(pre.resize_size, pre.crop_size)) ** 2 * 2
        ds = ds.map_batches(_decode, batch_format="numpy", batch_size=settings.batch_size, num_cpus=1,
                            memory=decode_bytes,
                            fn_kwargs={"transform": tta.image_transform(pre), "size": tta.input_size(pre),
                                       "draft_size": pre.resize_size, "max_pixels": settings.max_pixels,
                                       "max_aspect": settings.max_aspect})
        ds = ds.map_batches(
            _Embedder, batch_format="numpy", batch_size=settings.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0, num_cpus=1,
            fn_constructor_kwargs={"backbone": backbone.cpu(), "device": device.type, "precision": precision,
                                   "channels_last": settings.channels_last, "tta": settings.tta,
                                   "compile": settings.compile},
        )
        steady_heap()
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            features = out["features"]
            errors = [str(e) for e in out["error"]]
            yield split_batch(ids, out["position"], errors, lambda ok: features[ok], backbone.dim)
