"""Odd images per class: far from the rest of their class in the embedding.

Each image is scored against the other images *of its own class*:

* ``knn`` — mean cosine distance to its ``k`` nearest class-mates outside its own
  group (another view of the same object does not vouch for it);
* ``lof`` — scikit-learn's Local Outlier Factor (cosine) within the class.

Scores are divided by the class median so classes that are naturally spread out do
not fill the list; the top N overall go to a CSV and a gallery PNG grouped by class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.embeddings import Embeddings, group_codes
from featkit.errors import FeatkitError, choices_message
from featkit.explore.neighbors import cosine_knn
from featkit.explore.plots import gallery_png
from featkit.paths import EXPLORE_ELSEWHERE, new_file, slug

OUTLIER_METHODS = ("knn", "lof")


@dataclass(frozen=True)
class OutlierSettings:
    method: str = "knn"
    k: int = 10
    top: int = 50
    gallery: bool = True
    columns: int = 10

    def validate(self) -> None:
        if self.method not in OUTLIER_METHODS:
            raise FeatkitError(choices_message("outlier method", self.method, OUTLIER_METHODS))
        if self.k < 1:
            raise FeatkitError(f"k must be at least 1, got {self.k}")
        if self.top < 1:
            raise FeatkitError(f"top must be at least 1, got {self.top}")


@dataclass
class OutlierReport:
    key: str
    task: str
    method: str
    scores: pd.DataFrame  # every scored image, most unusual first
    csv: Path | None = None
    gallery: Path | None = None
    top: int = 50

    @property
    def top_rows(self) -> pd.DataFrame:
        return self.scores.head(self.top)

    def to_dict(self) -> dict:
        return {"key": self.key, "task": self.task, "method": self.method, "scored": len(self.scores),
                "csv": str(self.csv) if self.csv else None, "gallery": str(self.gallery) if self.gallery else None,
                "outliers": self.top_rows.to_dict(orient="records")}


def _class_scores(X: np.ndarray, codes: np.ndarray, method: str, k: int) -> np.ndarray:
    n = len(X)
    k = min(k, n - 1)
    if k < 1:
        return np.full(n, np.nan)
    if method == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        lof = LocalOutlierFactor(n_neighbors=k, metric="cosine").fit(X)
        return -lof.negative_outlier_factor_
    _, sims = cosine_knn(X, k, codes=codes)
    dist = np.where(np.isfinite(sims), 1.0 - sims, np.nan)
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(dist).sum(axis=1)
        return np.where(counts > 0, np.nansum(dist, axis=1) / np.maximum(counts, 1), np.nan)


def outlier_scores(X: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None, method: str = "knn",
                   k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(score, relative)`` per row: raw outlyingness within its class, and score / class median.

    Rows of a class with too few other members (or none outside their group) get NaN.
    """
    if method not in OUTLIER_METHODS:
        raise FeatkitError(choices_message("outlier method", method, OUTLIER_METHODS))
    y = np.asarray(y).astype(str)
    codes = group_codes(groups, len(y))
    score = np.full(len(y), np.nan)
    relative = np.full(len(y), np.nan)
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        s = _class_scores(X[rows], codes[rows], method, k)
        score[rows] = s
        finite = s[np.isfinite(s)]
        if len(finite):
            median = np.median(finite)
            relative[rows] = s / median if median > 0 else s
    return score, relative


def find_outliers(emb: Embeddings, task: str, *, settings: OutlierSettings = OutlierSettings(),
                  out: Path | None = None) -> OutlierReport:
    """Score every labelled image of ``task``; write the top N as CSV and a gallery grouped by class."""
    settings.validate()
    key = emb.key
    data = emb.task(task)
    score, relative = outlier_scores(data.X, data.y, groups=data.groups, method=settings.method, k=settings.k)
    frame = pd.DataFrame({"id": data.ids.astype(str), "path": [str(p) for p in emb.paths(data.index)],
                          "class": data.y.astype(str), "score": score, "relative_score": relative})
    if data.groups is not None:
        frame["group"] = data.groups
    frame = frame[np.isfinite(frame["relative_score"])]
    frame["rank_in_class"] = frame.groupby("class")["relative_score"].rank(ascending=False, method="first")
    frame = frame.astype({"rank_in_class": int}).sort_values("relative_score", ascending=False, kind="stable")
    frame = frame.reset_index(drop=True)
    if frame.empty:
        raise FeatkitError(f"no image of task {task!r} could be scored: each class needs at least two images "
                           "(outside one group)")
    out = Path(out) if out else emb.explore_dir
    report = OutlierReport(key=key, task=task, method=settings.method, scores=frame, top=settings.top)
    top = report.top_rows
    report.csv = out / f"outliers_{slug(task)}.csv"
    with new_file(report.csv, fix=EXPLORE_ELSEWHERE) as tmp:
        top.to_csv(tmp, index=False)
    if settings.gallery:
        paths, captions, width = _gallery_cells(top, settings.columns)
        report.gallery = gallery_png(paths, captions, out / f"outliers_{slug(task)}.png",
                                     title=f"{key} — {task}: top {len(top)} outliers ({settings.method}, "
                                           f"score ÷ class median), one row per class",
                                     columns=width)
    return report


def _gallery_cells(top: pd.DataFrame, columns: int) -> tuple[list, list[str], int]:
    """Cells for the gallery: each class starts a new row, most unusual first."""
    width = min(columns, max(top["class"].value_counts().max(), 1))
    paths: list = []
    captions: list[str] = []
    for cls, rows in top.groupby("class", sort=True):
        for _, r in rows.sort_values("relative_score", ascending=False, kind="stable").iterrows():
            paths.append(r["path"])
            captions.append(f"{cls} #{r['rank_in_class']}\n×{r['relative_score']:.2f}  {Path(r['id']).name[:22]}")
        pad = -len(paths) % width
        paths.extend([None] * pad)
        captions.extend([""] * pad)
    return paths, captions, width
