"""Shared-trunk multi-task fine-tuning whose embeddings go back into the store.

Importing this package registers the ``finetuned-`` variant loader with
:mod:`featkit.pipeline`, so ``featkit extract --variant finetuned-<run>`` finds runs.
"""

from featkit.finetune.compare import compare_single_multi
from featkit.finetune.runs import VARIANT_PREFIX, list_runs, run_paths
from featkit.finetune.settings import AUGMENTATIONS, Augment, FinetuneSettings, parse_cascade, parse_task_weights
from featkit.finetune.train import FinetuneResult, finetune
from featkit.finetune.variant import load_finetuned_backbone
from featkit.pipeline import register_variant_loader

register_variant_loader(VARIANT_PREFIX, load_finetuned_backbone)

__all__ = [
    "AUGMENTATIONS", "Augment", "FinetuneResult", "FinetuneSettings", "VARIANT_PREFIX", "compare_single_multi",
    "finetune", "list_runs", "load_finetuned_backbone", "parse_cascade", "parse_task_weights", "run_paths",
]
