"""Splits of labelled rows: the collection's split column, or (group-aware) stratified folds.

* :func:`evaluation_splits` — outer train/test splits: the split column when the
  collection has one (``test`` rows, else ``val``-like rows, are the test set); otherwise
  stratified K-fold, group-aware (``StratifiedGroupKFold``) when there is a group column,
  so the views of one object or the photos of one photographer never straddle folds.
* :func:`inner_splits` / :func:`validation_split` — folds of training rows only, for
  choosing hyperparameters (group-aware too).

sklearn is imported inside the functions: the mode names are read when the CLI parses
its arguments, which must not pay for importing sklearn.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from featkit.errors import FeatkitError, choices_message

SPLIT_MODES = ("auto", "column", "group", "stratified")
TEST_VALUES = ("test",)
VAL_VALUES = ("val", "valid", "validation", "dev", "holdout")


# -- labels ----------------------------------------------------------------------------
def check_labels(y: Sequence, *, allow_unknown: bool = False) -> np.ndarray:
    """``y`` as an object array of str; non-string labels are refused with the first culprit."""
    arr = np.asarray(y, dtype=object)
    if arr.ndim != 1:
        raise FeatkitError(f"labels must be one-dimensional, got shape {arr.shape}")
    for i, value in enumerate(arr):
        if value is None and allow_unknown:
            continue
        if not isinstance(value, str):
            raise FeatkitError(
                f"labels must be strings; row {i} holds {value!r} ({type(value).__name__}). "
                "Convert them (e.g. y.astype(str)) or mark unknown labels as None and drop those rows"
            )
    return arr


def class_counts(y: np.ndarray, groups: np.ndarray | None = None) -> dict[str, int]:
    """Members per class (distinct groups per class when ``groups`` is given)."""
    if groups is None:
        classes, counts = np.unique(y.astype(str), return_counts=True)
        return dict(zip(classes.tolist(), counts.tolist()))
    out: dict[str, set] = {}
    for label, group in zip(y, groups):
        out.setdefault(label, set()).add(group)
    return {k: len(v) for k, v in sorted(out.items())}


# -- splits ----------------------------------------------------------------------------
@dataclass
class Splits:
    """Train/test index pairs and how they were made."""

    folds: list[tuple[np.ndarray, np.ndarray]]
    mode: str
    description: str
    warnings: list[str] = field(default_factory=list)

    def fold_of(self, n: int) -> np.ndarray:
        """Fold number of each row's test appearance (-1: never tested)."""
        out = np.full(n, -1, dtype=np.int64)
        for k, (_, test) in enumerate(self.folds):
            out[test] = k
        return out


def resolve_split_mode(mode: str, *, split: np.ndarray | None, groups: np.ndarray | None) -> str:
    if mode not in SPLIT_MODES:
        raise FeatkitError(choices_message("split mode", mode, SPLIT_MODES))
    if mode == "auto":
        if split is not None and any(v is not None for v in split):
            return "column"
        return "group" if groups is not None else "stratified"
    if mode == "column" and split is None:
        raise FeatkitError("split mode 'column' needs a split column (set split in featkit.toml)")
    if mode == "group" and groups is None:
        raise FeatkitError("split mode 'group' needs a group column (set group in featkit.toml)")
    return mode


def _column_split(y: np.ndarray, split: np.ndarray, groups: np.ndarray | None) -> Splits:
    values = np.array([str(v).strip().lower() if v is not None else "" for v in split], dtype=object)
    seen = sorted(set(values.tolist()) - {""})
    test_values = [v for v in TEST_VALUES if v in seen] or [v for v in VAL_VALUES if v in seen]
    if not test_values:
        raise FeatkitError(
            f"the split column has no test rows: its values are {', '.join(seen) or '(none)'}; expected one of "
            f"{', '.join(TEST_VALUES + VAL_VALUES)} for the test set (or use --split group/stratified)"
        )
    test = np.flatnonzero(np.isin(values, test_values))
    train = np.flatnonzero(~np.isin(values, test_values) & (values != ""))
    notes = []
    unassigned = int((values == "").sum())
    if unassigned:
        notes.append(f"{unassigned} rows have no split value and are left out")
    if groups is not None:
        shared = set(groups[train].tolist()) & set(groups[test].tolist())
        if shared:
            notes.append(f"{len(shared)} groups appear on both sides of the split column (a leak in the split itself)")
    train_values = sorted(set(values[train].tolist()))
    description = (f"split column: train ({'+'.join(train_values)}) {len(train)} rows, "
                   f"test ({'+'.join(test_values)}) {len(test)} rows")
    return Splits([(train, test)], "column", description, notes)


def evaluation_splits(
    y: Sequence,
    groups: Sequence | None = None,
    *,
    split: Sequence | None = None,
    cv: int = 5,
    mode: str = "auto",
    seed: int = 0,
) -> Splits:
    """Outer train/test splits for labels ``y`` (see the module docstring).

    ``split`` is the collection's split column (``None`` entries: unassigned);
    ``groups`` its group column. ``mode`` forces ``column``, ``group`` or
    ``stratified`` (plain, ungrouped K-fold — for measuring the leak it causes).
    """
    y = np.asarray(y, dtype=object)
    groups_arr = None if groups is None else np.asarray(groups, dtype=object)
    split_arr = None if split is None else np.asarray(split, dtype=object)
    mode = resolve_split_mode(mode, split=split_arr, groups=groups_arr)
    if mode == "column":
        return _column_split(y, split_arr, groups_arr)
    index = np.zeros(len(y))
    if mode == "group":
        missing = sum(g is None for g in groups_arr)
        if missing:
            raise FeatkitError(f"{missing} rows have no group value; fill the group column or use --split stratified")
        n_groups = len(set(groups_arr.tolist()))
        if n_groups < cv:
            raise FeatkitError(f"{n_groups} groups cannot fill {cv} group-aware folds; use a smaller --cv")
        from sklearn.model_selection import StratifiedGroupKFold

        splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            folds = list(splitter.split(index, y.astype(str), groups_arr.astype(str)))
        description = f"{cv}-fold StratifiedGroupKFold ({n_groups} groups; no group in two folds)"
    else:
        from sklearn.model_selection import StratifiedKFold

        splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            folds = list(splitter.split(index, y.astype(str)))
        description = f"{cv}-fold StratifiedKFold (rows, ignoring groups)" if groups is not None \
            else f"{cv}-fold StratifiedKFold"
    return Splits(folds, mode, description)


def manifest_splits(manifest, *, task: str, cv: int = 5, mode: str = "auto",
                      seed: int = 0) -> tuple[np.ndarray, Splits]:
    """:func:`evaluation_splits` for a manifest's task: (positions of its labelled rows, splits over them).

    Fold indices index the returned positions, so ``manifest.ids[rows[test]]`` are a fold's test images.
    """
    labels = check_labels(manifest.task_labels(task), allow_unknown=True)
    rows = np.flatnonzero([v is not None for v in labels])
    groups = None if manifest.groups is None else manifest.groups[rows]
    split = None if manifest.split is None else manifest.split[rows]
    return rows, evaluation_splits(labels[rows], groups, split=split, cv=cv, mode=mode, seed=seed)


def rare_classes(y: np.ndarray, *, groups: np.ndarray | None, splits_mode: str, cv: int, inner_cv: int,
                 train_mask: np.ndarray | None = None) -> dict[str, str]:
    """Classes too small to evaluate honestly, and why (the stated fallback drops them)."""
    out = {}
    if splits_mode == "column":
        counts = class_counts(y[train_mask])
        for label in sorted(set(y.tolist())):
            n = counts.get(label, 0)
            if n < max(2, inner_cv):
                out[label] = (f"{n} training rows (< {max(2, inner_cv)} needed to choose hyperparameters "
                              "inside the training data)")
        return out
    counts = class_counts(y, groups if splits_mode == "group" else None)
    unit = "groups" if splits_mode == "group" else "rows"
    for label, n in counts.items():
        if n < cv:
            out[label] = f"{n} {unit} (< {cv} folds: it cannot appear in every fold)"
    return out


def inner_splits(y: np.ndarray, groups: np.ndarray | None, *, k: int, seed: int) -> list:
    """Folds of the training rows for choosing hyperparameters (group-aware when grouped)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    index = np.zeros(len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if groups is not None and len(set(groups.tolist())) >= k:
            return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(
                index, y.astype(str), groups.astype(str)))
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(index, y.astype(str)))


def validation_split(y: np.ndarray, groups: np.ndarray | None, *, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One (train, validation) split of training rows, about ``fraction`` held out."""
    k = max(2, int(round(1 / fraction)))
    train, val = inner_splits(y, groups, k=k, seed=seed)[0]
    seen = set(y[train].tolist())
    return train, val[np.isin(y[val], list(seen))]
