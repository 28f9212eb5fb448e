"""Shared-trunk multi-task fine-tuning whose embeddings go back into the store.

The trunk of run ``<run>`` becomes the store variant ``finetuned-<run>``: the backbone
registry resolves that name through :func:`featkit.finetune.variant.load_finetuned_backbone`
(registered by dotted path in :mod:`featkit.backbones.variants`, so nothing here is
imported until it is used). The names below load on first use: the CLI reads
:mod:`featkit.finetune.settings` without importing torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "compare_single_multi": "featkit.finetune.compare",
    "VARIANT_PREFIX": "featkit.finetune.runs", "list_runs": "featkit.finetune.runs", "run_paths": "featkit.finetune.runs",
    "AUGMENTATIONS": "featkit.finetune.settings", "Augment": "featkit.finetune.settings",
    "FinetuneSettings": "featkit.finetune.settings", "parse_cascade": "featkit.finetune.settings",
    "parse_task_weights": "featkit.finetune.settings",
    "FinetuneResult": "featkit.finetune.train", "finetune": "featkit.finetune.train",
    "load_finetuned_backbone": "featkit.finetune.variant",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featkit.finetune' has no attribute {name!r}")
