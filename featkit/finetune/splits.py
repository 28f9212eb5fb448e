"""Train / validation / held-out test rows for fine-tuning, never splitting a group.

From the collection's split column when it has one (train, val, test, read as fit reads
them); what it lacks is carved from its training rows. Without one, a group-aware
stratified holdout (the first fold of fit's StratifiedGroupKFold) takes the test rows
and then the validation rows, stratified on the first task's labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featkit.data.manifest import Manifest
from featkit.data.splits import TEST_VALUES, VAL_VALUES, evaluation_splits
from featkit.errors import FeatkitError

_NAMES = {"train": "train", **{v: "val" for v in VAL_VALUES}, **{v: "test" for v in TEST_VALUES}}
_UNKNOWN = "\0unknown"


@dataclass(frozen=True, eq=False)
class Split:
    """Row positions in the collection of each part, and how they were chosen."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    source: str

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def save(self, path: Path, collection: Manifest) -> None:
        ids = np.asarray(collection.ids, dtype=object)
        data = {"source": self.source, **{part: ids[getattr(self, part)].tolist() for part in ("train", "val", "test")}}
        Path(path).write_text(json.dumps(data) + "\n")

    @classmethod
    def load(cls, path: Path, collection: Manifest) -> "Split":
        data = json.loads(Path(path).read_text())
        try:
            parts = {part: collection.index_of(data[part]) for part in ("train", "val", "test")}
        except FeatkitError as err:
            raise FeatkitError(f"the run's split ({path}) no longer matches the collection: {err}") from None
        return cls(source=data.get("source", ""), **parts)


def _groups(collection: Manifest) -> np.ndarray:
    n = len(collection)
    if collection.groups is None:
        return np.arange(n).astype(str).astype(object)
    groups = collection.groups.copy()
    missing = np.array([g is None for g in groups])
    groups[missing] = [f"\0row{i}" for i in np.flatnonzero(missing)]  # an unlabelled group is its own
    return groups


def _holdout(rows: np.ndarray, y: np.ndarray, groups: np.ndarray, fraction: float, seed: int, what: str):
    """The first fold of fit's group-aware stratified K-fold, K = 1 / fraction."""
    n_splits = max(2, round(1 / fraction))
    n_groups = len(set(groups[rows]))
    if n_groups < n_splits:
        raise FeatkitError(f"only {n_groups} groups to split a {what} of {fraction:.0%} from; "
                           f"at least {n_splits} are needed (lower the fraction or add images)")
    keep, held = evaluation_splits(y[rows], groups[rows], cv=n_splits, mode="group", seed=seed).folds[0]
    return rows[keep], rows[held]


def make_split(collection: Manifest, stratify_task: str, *, val_fraction: float = 0.15,
               test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Train/val/test rows: the split column where there is one, else a group-aware holdout."""
    y = np.array([_UNKNOWN if v is None else v for v in collection.task_labels(stratify_task)], dtype=object)
    groups = _groups(collection)
    rows = np.arange(len(collection))
    if collection.split is None:
        rest, test = _holdout(rows, y, groups, test_fraction, seed, "test set")
        train, val = _holdout(rest, y, groups, val_fraction / (1 - test_fraction), seed, "validation set")
        return Split(np.sort(train), np.sort(val), np.sort(test),
                     f"group-aware stratified holdout on {stratify_task!r} (seed {seed})")
    names = np.array([_NAMES.get(str(v).strip().lower()) if v is not None else None for v in collection.split])
    bad = sorted({str(v) for v, n in zip(collection.split, names) if v is not None and n is None})
    if bad:
        raise FeatkitError(f"split value {bad[0]!r} is not understood; valid values: {', '.join(sorted(_NAMES))}")
    train, val, test = (rows[names == part] for part in ("train", "val", "test"))
    if len(train) == 0:
        raise FeatkitError("the split column marks no row as train")
    source = "the collection's split column"
    if len(test) == 0 and len(val):  # published train/val: val is the held-out set, validation comes from train
        test, val = val, np.array([], dtype=int)
        source += " (its val rows held out as test)"
    if len(test) == 0:
        train, test = _holdout(train, y, groups, test_fraction, seed, "test set")
        source += f"; test carved from train by group-aware holdout (seed {seed})"
    if len(val) == 0:
        train, val = _holdout(train, y, groups, val_fraction, seed, "validation set")
        source += f"; validation carved from train by group-aware holdout (seed {seed})"
    return Split(np.sort(train), np.sort(val), np.sort(test), source)
