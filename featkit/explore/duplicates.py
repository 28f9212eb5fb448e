"""Near-duplicate images, the split leaks they cause, and duplicates labelled two ways.

Pairs are found by cosine similarity of L2-normalised embeddings, block by block
(never an n x n matrix), at or above a threshold. A pair *leaks* when its two images
sit on different sides of the split column (one trains, the other tests) or belong to
different groups (a group-aware split could then put the same picture on both sides).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.embeddings import Embeddings
from featkit.errors import FeatkitError
from featkit.explore.neighbors import pairs_above
from featkit.paths import EXPLORE_ELSEWHERE, new_file


@dataclass(frozen=True)
class DuplicateSettings:
    threshold: float = 0.97  # cosine; byte-identical images score ~1.0
    max_pairs: int = 100_000  # the most similar pairs kept; more are reported as truncated

    def validate(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise FeatkitError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.max_pairs < 1:
            raise FeatkitError(f"max_pairs must be at least 1, got {self.max_pairs}")


@dataclass
class DuplicateReport:
    key: str
    n_images: int
    threshold: float
    pairs: pd.DataFrame  # id_a, id_b, path_a, path_b, similarity, split/group of each, leak, leak_reason,
    #                      label_conflict (tasks whose labels differ between the two)
    truncated: bool = False
    csv: Path | None = None

    @property
    def leaks(self) -> pd.DataFrame:
        return self.pairs[self.pairs["leak"]]

    def leaked_ids(self, side: str | None = None) -> set[str]:
        """Images in a leaking pair (optionally only those whose split value is ``side``, e.g. "val")."""
        leaks = self.leaks
        out: set[str] = set()
        for a in ("a", "b"):
            rows = leaks if side is None or f"split_{a}" not in leaks else leaks[leaks[f"split_{a}"] == side]
            out.update(rows[f"id_{a}"].tolist())
        return out

    def to_dict(self) -> dict:
        return {"key": self.key, "images": self.n_images, "threshold": self.threshold, "pairs_found": len(self.pairs),
                "leaks": int(self.pairs["leak"].sum()),
                "label_conflicts": int((self.pairs["label_conflict"] != "").sum()), "truncated": self.truncated,
                "csv": str(self.csv) if self.csv else None,
                "pairs": self.pairs.to_dict(orient="records")}


def leak_reasons(i: np.ndarray, j: np.ndarray, *, split: np.ndarray | None,
                 groups: np.ndarray | None) -> list[str]:
    """Why each pair (i, j) leaks: "split" (train/val ...), "group", both, or ""."""
    reasons = []
    for a, b in zip(i, j):
        why = []
        if split is not None and split[a] is not None and split[b] is not None and split[a] != split[b]:
            why.append("split")
        if groups is not None and groups[a] is not None and groups[b] is not None and groups[a] != groups[b]:
            why.append("group")
        reasons.append("+".join(why))
    return reasons


def label_conflicts(i: np.ndarray, j: np.ndarray, labels: dict[str, np.ndarray]) -> list[str]:
    """Per pair, the tasks whose (known) labels differ: the same picture labelled two ways."""
    out = []
    for a, b in zip(i, j):
        out.append(",".join(t for t, y in labels.items() if y[a] is not None and y[b] is not None and y[a] != y[b]))
    return out


def find_duplicates(emb: Embeddings, *, settings: DuplicateSettings = DuplicateSettings(),
                    out: Path | None = None) -> DuplicateReport:
    """Near-duplicate pairs of ``emb``, leaks flagged; CSV written."""
    settings.validate()
    key = emb.key
    i, j, sim, truncated = pairs_above(emb.X, settings.threshold, max_pairs=settings.max_pairs)
    split, groups = emb.split, emb.groups
    reasons = leak_reasons(i, j, split=split, groups=groups)
    frame = pd.DataFrame({
        "id_a": emb.ids[i].astype(str), "id_b": emb.ids[j].astype(str),
        "path_a": [str(p) for p in emb.paths(i)], "path_b": [str(p) for p in emb.paths(j)],
        "similarity": np.round(sim.astype(np.float64), 6),
    })
    if split is not None:
        frame["split_a"], frame["split_b"] = split[i], split[j]
    if groups is not None:
        frame["group_a"], frame["group_b"] = groups[i], groups[j]
    frame["leak"] = np.array([bool(r) for r in reasons], dtype=bool)
    frame["leak_reason"] = reasons
    frame["label_conflict"] = label_conflicts(i, j, {t: emb.labels(t) for t in emb.tasks})
    out = Path(out) if out else emb.explore_dir
    csv = out / "duplicates.csv"
    with new_file(csv, fix=EXPLORE_ELSEWHERE) as tmp:
        frame.to_csv(tmp, index=False)
    return DuplicateReport(key=key, n_images=len(emb), threshold=settings.threshold, pairs=frame,
                           truncated=truncated, csv=csv)
