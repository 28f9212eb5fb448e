"""How well an embedding separates each task's classes, without training a head.

Two views, per task and per class:

* **silhouette** (cosine): how much closer an image is to its own class than to the
  nearest other class, averaged; -1..1.
* **k-NN accuracy** (cosine, majority vote of the ``k`` nearest labelled images):
  leave-one-out, and leave-*group*-out when the collection has groups, so another
  photo of the same object never votes. Reported as accuracy and balanced accuracy,
  and as recall per class.

``separability`` runs every cached group (frozen and fine-tuned variants) over every
task, so the rows line up side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import balanced_accuracy_score, silhouette_samples

from featkit.embeddings import Embeddings, group_codes, iter_tasks, names_tasks, resolve_tasks
from featkit.errors import FeatkitError
from featkit.explore.neighbors import cosine_knn, l2_normalize


@dataclass(frozen=True)
class SeparabilitySettings:
    k: int = 10
    max_points: int = 10000  # a stratified random subsample above this (silhouette is quadratic)
    seed: int = 0

    def validate(self) -> None:
        if self.k < 1:
            raise FeatkitError(f"k must be at least 1, got {self.k}")
        if self.max_points < 10:
            raise FeatkitError(f"max_points must be at least 10, got {self.max_points}")


@dataclass
class SeparabilityReport:
    rows: list[dict] = field(default_factory=list)  # one per (key, task)
    per_class: list[dict] = field(default_factory=list)  # one per (key, task, class)
    skipped: list[dict] = field(default_factory=list)  # (key, task, reason): a task that cannot be measured

    def to_dict(self) -> dict:
        return {"rows": self.rows, "per_class": self.per_class, "skipped": self.skipped}

    def table(self, metric: str = "knn_balanced_accuracy") -> dict[str, dict[str, float]]:
        """``{task: {key: value}}``: backbones/variants side by side for each task."""
        out: dict[str, dict[str, float]] = {}
        for row in self.rows:
            out.setdefault(row["task"], {})[row["key"]] = row[metric]
        return out


def knn_predict(X: np.ndarray, y: np.ndarray, *, k: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Each row's class by a vote of its ``k`` nearest rows (cosine) outside its own group.

    Votes are weighted by similarity so ties break towards closer neighbours; a row
    with no neighbour outside its group gets the empty string.
    """
    classes, codes_y = np.unique(y, return_inverse=True)
    index, sims = cosine_knn(X, k, codes=group_codes(groups, len(X)))
    valid = index >= 0
    votes = np.zeros((len(X), len(classes)))
    weights = np.where(valid, 1.0 + 1e-3 * np.nan_to_num(sims, neginf=0.0), 0.0)
    np.add.at(votes, (np.repeat(np.arange(len(X)), k)[valid.ravel()], codes_y[index[valid]]),
              weights[valid])
    pred = classes[votes.argmax(axis=1)].astype(object)
    pred[~valid.any(axis=1)] = ""
    return pred


def _subsample(y: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """A stratified random subsample of at most ``max_points`` rows (every class kept)."""
    if len(y) <= max_points:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    classes, counts = np.unique(y, return_counts=True)
    for cls, count in zip(classes, counts):
        rows = np.flatnonzero(y == cls)
        take = max(2, int(round(count * max_points / len(y))))
        keep.append(rng.choice(rows, size=min(take, count), replace=False))
    return np.sort(np.concatenate(keep))


def embedding_separability(X: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None,
                           settings: SeparabilitySettings = SeparabilitySettings()) -> tuple[dict, list[dict]]:
    """Summary metrics and per-class rows for embeddings ``X`` with labels ``y``."""
    settings.validate()
    y = np.asarray(y).astype(str)
    classes = np.unique(y)
    if len(classes) < 2:
        raise FeatkitError(f"separability needs at least two classes, got {len(classes)}: {[str(c) for c in classes]}")
    keep = _subsample(y, settings.max_points, settings.seed)
    X, y = X[keep], y[keep]
    groups = None if groups is None else np.asarray(groups, dtype=object)[keep]
    # normalise here: sklearn treats rows of tiny norm (e.g. a random-weights trunk) as zero vectors
    sil = silhouette_samples(l2_normalize(X), y, metric="cosine")
    pred = knn_predict(X, y, k=settings.k, groups=groups)
    judged = pred != ""
    summary = {
        "n": int(len(y)), "classes": int(len(classes)), "k": settings.k,
        "group_aware": groups is not None,
        "silhouette": float(sil.mean()),
        "knn_accuracy": float((pred[judged] == y[judged]).mean()) if judged.any() else float("nan"),
        "knn_balanced_accuracy": float(balanced_accuracy_score(y[judged], pred[judged].astype(str)))
        if judged.any() else float("nan"),
        "chance_balanced_accuracy": 1.0 / len(classes),
    }
    per_class = []
    for cls in classes:
        mask = y == cls
        hit = mask & judged
        per_class.append({"class": str(cls), "n": int(mask.sum()), "silhouette": float(sil[mask].mean()),
                          "knn_recall": float((pred[hit] == cls).mean()) if hit.any() else float("nan")})
    return summary, per_class


def separability(embs: list[Embeddings], *, tasks=None,
                 settings: SeparabilitySettings = SeparabilitySettings()) -> SeparabilityReport:
    """Separability of every task in every store group of ``embs`` (side by side).

    A task named explicitly that cannot be measured (one class) is an error; with
    ``tasks`` None/"all" it is recorded in ``report.skipped`` and the rest go on.
    """
    settings.validate()
    strict = names_tasks(tasks)
    report = SeparabilityReport()
    for emb in embs:
        for data in iter_tasks(emb, resolve_tasks(emb.manifest, tasks), strict=strict, skipped=report.skipped):
            summary, per_class = embedding_separability(data.X, data.y, groups=data.groups, settings=settings)
            report.rows.append({"key": emb.key, "task": data.task, **summary})
            report.per_class.extend({"key": emb.key, "task": data.task, **row} for row in per_class)
    return report
