"""``featkit extract``: embed every image of a collection and cache the rows in its store.

What the runtime (:class:`featkit.extract.runtime.Embedder`) yields is written batch by
batch through the store's writer, addressed by image id. Re-running computes only rows
that are not done; failures are recorded, never fatal, and not retried unless asked.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from featkit._version import __version__
from featkit.backbones.model import Backbone
from featkit.backbones.variants import store_key
from featkit.data.manifest import Manifest
from featkit.extract.runtime import Embedder, progress_bar
from featkit.extract.settings import ExtractSettings
from featkit.extract.tta import create_tta
from featkit.store import FeatureStore, GroupMeta


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


def _pending(manifest: Manifest, status: dict | None, retry_failed: bool) -> tuple[np.ndarray, int, int]:
    """(ids still to embed, how many are done, how many failed before and are skipped)."""
    ids = manifest.ids
    if status is None:
        return ids, 0, 0
    done = np.isin(ids, np.asarray(status["ids"], dtype=str)[np.asarray(status["done"], dtype=bool)])
    failed = np.isin(ids, np.asarray(list(status["failures"]), dtype=str)) & ~done
    todo = ~done & (~failed if not retry_failed else True)
    return ids[todo], int(done.sum()), 0 if retry_failed else int(failed.sum())


def extract(manifest: Manifest, backbone: Backbone, *, store: FeatureStore,
            settings: ExtractSettings = ExtractSettings()) -> ExtractSummary:
    """Cache embeddings of every image of ``manifest`` made by ``backbone`` in ``store``; resume what is done.

    Rows go to group ``<backbone>/<backbone.variant>`` (with ``+tta-<mode>`` when
    ``settings.tta`` averages views).
    """
    embedder = Embedder.prepare(backbone, settings)
    tta = create_tta(settings.tta)
    variant = tta.variant(backbone.variant)
    key = store_key(backbone.name, variant)
    meta = group_meta(backbone, variant, settings, {"manifest_hash": manifest.manifest_hash,
                                                    **({"tta": tta.name} if tta.n_views > 1 else {})})
    start = time.perf_counter()
    computed, failures = 0, []
    with store.writer() as writer:
        writer.checkpoint_seconds = settings.checkpoint_seconds
        writer.ensure_group(meta, manifest.ids)
        pending, already, skipped_failed = _pending(manifest, store.status(key), settings.retry_failed)
        if settings.limit is not None:
            pending = pending[: settings.limit]
        with progress_bar(settings.progress and len(pending) > 0) as progress:
            task = progress.add_task(f"extract {key}", total=len(pending)) if progress else None
            for batch in embedder.embed(pending, manifest.paths(pending)):
                writer.write_rows(key, batch.ids, batch.features, batch.failures)
                computed += len(batch.ids)
                failures.extend(batch.failures)
                if progress:
                    progress.update(task, advance=len(batch))
    seconds = time.perf_counter() - start
    remaining = len(_pending(manifest, store.status(key), retry_failed=False)[0])
    return ExtractSummary(
        key=key, store=str(store.path), total=len(manifest), already_done=already, computed=computed,
        failed=len(failures), skipped_failed=skipped_failed, remaining=remaining, seconds=round(seconds, 3),
        images_per_s=round((computed + len(failures)) / seconds, 2) if seconds > 0 else 0.0,
        device=str(embedder.device), precision=embedder.precision, failures=failures,
    )
