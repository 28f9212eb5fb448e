"""Likely mislabelled images, confident-learning style (Northcutt et al., 2021).

1. Out-of-fold predicted probabilities: every image is scored by a head that never
   saw it (or another view of its object: folds are group-aware) —
   :func:`featkit.evaluate.out_of_fold_proba`.
2. Per-class thresholds ``t_j`` = the mean probability of class ``j`` over the images
   labelled ``j`` (the class's average self-confidence).
3. An image's *confident label* is the most probable class among those whose
   probability reaches their threshold. Counting (given, confident) pairs gives the
   confident joint; its off-diagonal entries are the label issues, and the
   confident label is the suggestion.
4. Issues are ranked by self-confidence (the probability of the given label) or by
   normalised margin (given label's probability minus the best other class's),
   lowest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.embeddings import Embeddings
from featkit.errors import FeatkitError, choices_message
from featkit.paths import slug

RANK_BY = ("self_confidence", "margin")


@dataclass(frozen=True)
class LabelIssueSettings:
    clf: str = "logreg"  # a head from featkit's head registry
    cv: int = 5
    C: float | None = None  # fix the head's C (faster); None: chosen by inner CV in each training fold
    rank_by: str = "self_confidence"
    seed: int = 0

    def validate(self) -> None:
        if self.rank_by not in RANK_BY:
            raise FeatkitError(choices_message("ranking", self.rank_by, RANK_BY))
        if self.cv < 2:
            raise FeatkitError(f"cv must be at least 2 folds, got {self.cv}")
        if self.C is not None and self.C <= 0:
            raise FeatkitError(f"C must be positive, got {self.C}")


@dataclass
class LabelIssues:
    """Confident-learning output for ``n`` images of one task."""

    classes: list[str]
    thresholds: np.ndarray  # (K,) per-class self-confidence thresholds
    confident_joint: np.ndarray  # (K, K) given x confident label counts
    issues: pd.DataFrame  # ranked: position, given, suggested, self_confidence, suggested_confidence, margin
    n: int
    proba_source: str = ""

    @property
    def noise_rate(self) -> float:
        total = self.confident_joint.sum()
        return float((total - np.trace(self.confident_joint)) / total) if total else 0.0


@dataclass
class LabelIssueReport:
    key: str
    task: str
    result: LabelIssues
    frame: pd.DataFrame  # issues with ids and paths
    csv: Path | None = None

    def to_dict(self) -> dict:
        r = self.result
        return {"key": self.key, "task": self.task, "n": r.n, "issues": len(self.frame),
                "estimated_noise_rate": round(r.noise_rate, 4), "proba_source": r.proba_source,
                "classes": r.classes, "thresholds": [round(float(t), 4) for t in r.thresholds],
                "confident_joint": r.confident_joint.tolist(), "csv": str(self.csv) if self.csv else None,
                "label_issues": self.frame.to_dict(orient="records")}


def confident_learning(proba: np.ndarray, given: np.ndarray, classes, *, rank_by: str = "self_confidence") -> LabelIssues:
    """Label issues from out-of-fold ``proba`` (n, K) and ``given`` labels (class names)."""
    if rank_by not in RANK_BY:
        raise FeatkitError(choices_message("ranking", rank_by, RANK_BY))
    classes = [str(c) for c in classes]
    proba = np.asarray(proba, dtype=np.float64)
    where = {c: k for k, c in enumerate(classes)}
    unknown = sorted({str(v) for v in given} - set(where))
    if unknown:
        raise FeatkitError(f"label(s) {', '.join(map(repr, unknown))} are not among the classes "
                           f"{', '.join(classes)} of the probabilities")
    g = np.array([where[str(v)] for v in given], dtype=np.int64)
    n, K = proba.shape
    judged = np.isfinite(proba).all(axis=1)  # a row no fold predicted is not judged
    thresholds = np.array([proba[judged & (g == j), j].mean() if (judged & (g == j)).any() else np.inf
                           for j in range(K)])
    above = (np.nan_to_num(proba, nan=-1.0) >= thresholds[None, :] - 1e-12) & judged[:, None]
    confident = np.where(above, proba, -np.inf).argmax(axis=1)
    confident[~above.any(axis=1)] = -1
    joint = np.zeros((K, K), dtype=np.int64)
    has = confident >= 0
    np.add.at(joint, (g[has], confident[has]), 1)
    rows = np.arange(n)
    self_conf = proba[rows, g]
    others = proba.copy()
    others[rows, g] = -np.inf
    margin = self_conf - others.max(axis=1)
    flagged = np.flatnonzero(has & (confident != g))
    issues = pd.DataFrame({
        "position": flagged,
        "given": [classes[i] for i in g[flagged]],
        "suggested": [classes[i] for i in confident[flagged]],
        "self_confidence": np.round(self_conf[flagged], 4),
        "suggested_confidence": np.round(proba[flagged, confident[flagged]], 4),
        "margin": np.round(margin[flagged], 4),
    })
    order = np.lexsort((flagged, margin[flagged] if rank_by == "margin" else self_conf[flagged]))
    issues = issues.iloc[order].reset_index(drop=True)
    issues.insert(0, "rank", np.arange(1, len(issues) + 1))
    return LabelIssues(classes=classes, thresholds=thresholds, confident_joint=joint, issues=issues, n=n)


def out_of_fold(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                settings: LabelIssueSettings) -> tuple[np.ndarray, list[str], str]:
    """``(proba, classes, source)``: featkit's group-aware out-of-fold probabilities."""
    from featkit.evaluate import out_of_fold_proba

    params = {"C": (settings.C,)} if settings.C is not None else None
    proba, classes = out_of_fold_proba(X, y.astype(object), groups, clf=settings.clf, cv=settings.cv,
                                       seed=settings.seed, params=params)
    tuned = f"C={settings.C}" if settings.C is not None else "C by inner CV"
    return proba, list(classes), f"featkit.evaluate.out_of_fold_proba ({settings.clf}, {settings.cv} folds, {tuned})"


def find_label_issues(emb: Embeddings, task: str, *, settings: LabelIssueSettings = LabelIssueSettings(),
                      out: Path | None = None) -> LabelIssueReport:
    """Ranked likely-mislabelled images of ``task`` with the given and suggested label; CSV written."""
    settings.validate()
    data = emb.task(task)
    counts = pd.Series(data.y).value_counts()
    if counts.min() < 2:
        rare = ", ".join(f"{c!r} ({n})" for c, n in counts.items() if n < 2)
        raise FeatkitError(f"task {task!r}: class(es) {rare} have fewer than 2 labelled images; "
                           "this needs at least 2 per class")
    proba, classes, source = out_of_fold(data.X, data.y, data.groups, settings)
    result = confident_learning(proba, data.y, classes, rank_by=settings.rank_by)
    result.proba_source = source
    pos = result.issues["position"].to_numpy()
    frame = result.issues.drop(columns="position")
    frame.insert(1, "id", data.ids[pos].astype(str))
    frame.insert(2, "path", [str(p) for p in emb.paths(data.index[pos])])
    out = Path(out) if out else emb.explore_dir
    out.mkdir(parents=True, exist_ok=True)
    csv = out / f"label_issues_{slug(task)}.csv"
    frame.to_csv(csv, index=False)
    return LabelIssueReport(key=emb.key, task=task, result=result, frame=frame, csv=csv)
