"""Extraction: images -> embeddings, through one runtime, cached in the store or kept in memory.

* :mod:`~featkit.extract.settings` — :class:`ExtractSettings` (imports no torch);
* :mod:`~featkit.extract.engines` and :mod:`~featkit.extract.tta` — registries of engines
  (local, Ray) and test-time augmentation modes (import no torch);
* :mod:`~featkit.extract.decode` / :mod:`~featkit.extract.gpu` — the decode paths;
* :mod:`~featkit.extract.runtime` — :class:`Embedder`: a prepared backbone that embeds a
  stream of images, yielding ids, features and failures;
* :mod:`~featkit.extract.cache` — :func:`extract`: what ``featkit extract`` runs, writing
  those batches to the store.

The names below are imported on first use, so ``featkit.extract.settings`` stays light.
"""

from __future__ import annotations

import importlib

from featkit.extract.settings import DEVICES, PRECISIONS, ExtractSettings

_LAZY = {
    "extract": "featkit.extract.cache", "ExtractSummary": "featkit.extract.cache",
    "Embedder": "featkit.extract.runtime", "EmbeddedBatch": "featkit.extract.runtime",
    "autocast": "featkit.extract.runtime", "prepare_model": "featkit.extract.runtime",
    "resolve_device": "featkit.extract.runtime", "resolve_precision": "featkit.extract.runtime",
    "embed_batch": "featkit.extract.runtime",
}

__all__ = ["DEVICES", "PRECISIONS", "ExtractSettings", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featkit.extract' has no attribute {name!r}")
