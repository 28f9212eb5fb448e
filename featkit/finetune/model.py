"""One pretrained trunk, one linear head per task, and the multi-task loss.

Loss = sum over tasks of weight_t * CE_t, where CE_t only sees rows whose label for
t is known (unknown labels are masked out of that task's loss only). Weights are
fixed per task, or learned with homoscedastic uncertainty (Kendall, Gal & Cipolla,
CVPR 2018: ``exp(-s_t) * CE_t + s_t / 2`` with ``s_t = log sigma_t^2``). Class
weights inside each CE counter imbalance: ``balanced`` (n / (k * n_c)) or
``effective`` (Cui et al., CVPR 2019: (1 - beta) / (1 - beta^n_c)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from featkit.backbones import Backbone
from featkit.finetune.settings import cascade_order

IGNORE = -100  # target of a row whose label is unknown for a task


class MultiTaskNet(nn.Module):
    """``forward(x)`` -> ``{task: logits}``; ``embed(x)`` -> the trunk's pooled embedding.

    With a cascade ``(parent, child)`` the child head sees the embedding concatenated
    with the parent head's softmax probabilities (the make -> model idea).
    """

    def __init__(self, trunk: Backbone, classes: dict[str, tuple[str, ...]], *, dropout: float = 0.2,
                 cascade: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__()
        self.trunk = trunk
        self.tasks = tuple(classes)
        self.classes = dict(classes)
        self.parent_of = {child: parent for parent, child in cascade}
        self.order = cascade_order(self.tasks, tuple(cascade))
        self.dropout = nn.Dropout(dropout)
        # a list, not a ModuleDict: task names are manifest columns and may contain dots
        self.heads = nn.ModuleList(
            nn.Linear(trunk.dim + (len(classes[self.parent_of[t]]) if t in self.parent_of else 0), len(classes[t]))
            for t in self.tasks
        )

    def head(self, task: str) -> nn.Linear:
        return self.heads[self.tasks.index(task)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_heads(self.trunk(x))

    def forward_heads(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = self.dropout(emb)
        logits: dict[str, torch.Tensor] = {}
        for task in self.order:
            inputs = emb
            if task in self.parent_of:
                parent = logits[self.parent_of[task]]
                inputs = torch.cat([emb, parent.float().softmax(dim=1).to(emb.dtype)], dim=1)
            logits[task] = self.head(task)(inputs)
        return {task: logits[task] for task in self.tasks}


def class_weights(targets: np.ndarray, n_classes: int, kind: str, *, beta: float = 0.999) -> torch.Tensor | None:
    """Per-class CE weights from the training labels of one task (IGNORE rows skipped)."""
    if kind == "none":
        return None
    y = targets[targets != IGNORE]
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = np.flatnonzero(counts)
    weights = np.zeros(n_classes)
    if kind == "balanced":
        weights[present] = compute_class_weight("balanced", classes=present, y=y)
    else:  # effective number of samples
        weights[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
        weights *= len(present) / weights.sum()
    return torch.tensor(weights, dtype=torch.float32)


class MultiTaskLoss(nn.Module):
    """Sum of masked per-task cross-entropies; returns (total, {task: CE}, {task: rows})."""

    def __init__(self, tasks: tuple[str, ...], *, task_weights: dict[str, float] | None = None,
                 class_weights: dict[str, torch.Tensor | None] | None = None, uncertainty: bool = False,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.task_weights = {t: float((task_weights or {}).get(t, 1.0)) for t in self.tasks}
        self.label_smoothing = label_smoothing
        for i, task in enumerate(self.tasks):
            weight = (class_weights or {}).get(task)
            self.register_buffer(f"class_weight_{i}", weight if weight is not None else None)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks))) if uncertainty else None

    def forward(self, logits: dict[str, torch.Tensor], targets: torch.Tensor):
        total = logits[self.tasks[0]].new_zeros((), dtype=torch.float32)
        per_task: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for i, task in enumerate(self.tasks):
            y = targets[:, i]
            known = y != IGNORE
            counts[task] = int(known.sum())
            if counts[task] == 0:
                continue  # no labelled row for this task in the batch: it adds nothing
            ce = F.cross_entropy(logits[task][known].float(), y[known], weight=getattr(self, f"class_weight_{i}"),
                                 label_smoothing=self.label_smoothing)
            per_task[task] = ce.detach()
            if self.log_vars is not None:
                s = self.log_vars[i]
                ce = torch.exp(-s) * ce + 0.5 * s
            total = total + self.task_weights[task] * ce
        return total, per_task, counts

    def uncertainty_weights(self) -> dict[str, float]:
        """The learned ``exp(-s_t)`` per task (empty with fixed weights)."""
        if self.log_vars is None:
            return {}
        return {t: float(torch.exp(-v)) for t, v in zip(self.tasks, self.log_vars.detach())}
