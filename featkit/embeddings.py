"""Cached embeddings lined up with the collection, and the labelled rows of one task.

:class:`Embeddings` is what everything downstream of the store reads — fitting heads,
exploration, similarity search, the fine-tune probe: the done rows of one store group
(``key`` = ``backbone/variant``) that are still in the manifest, in store order, with
their labels, groups and split values beside them. :meth:`Embeddings.task` gives the
one task-data type, :class:`TaskData`: the rows labelled for a task (unknown labels
are left out of that task only). When the embedding comes from a network trained on
this collection (a ``finetuned-<run>`` variant), the images it trained or early-stopped
on are left out too and counted (``excluded_trunk_training``): fitting, ranking,
separability and label issues then score only images the trunk never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from featkit.backbones.variants import trained_ids
from featkit.data.manifest import Manifest
from featkit.data.splits import check_labels
from featkit.errors import FeatkitError
from featkit.store import FeatureStore

ALL = "all"


@dataclass(frozen=True, eq=False)
class TaskData:
    """The labelled rows of one task: ``X[i]`` has class ``y[i]``; ``index[i]`` is its row in the Embeddings."""

    task: str
    ids: np.ndarray
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None
    split: np.ndarray | None
    index: np.ndarray
    counts: dict = field(default_factory=dict)  # labelled, unknown, missing_features, used, and what was left out

    def __len__(self) -> int:
        return len(self.y)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.y.tolist())))

    def subset(self, keep: np.ndarray, **counts: int) -> "TaskData":
        """The rows where ``keep`` is true; ``counts`` record why the others were left out."""
        keep = np.asarray(keep, dtype=bool)
        take = (lambda a: None if a is None else a[keep])
        return replace(self, ids=self.ids[keep], X=self.X[keep], y=self.y[keep], groups=take(self.groups),
                       split=take(self.split), index=self.index[keep],
                       counts={**self.counts, **counts, "used": int(keep.sum())})


@dataclass(frozen=True, eq=False)
class Embeddings:
    """``X[i]`` embeds ``ids[i]``; ``rows[i]`` is that image's position in ``manifest``."""

    key: str
    ids: np.ndarray
    X: np.ndarray
    manifest: Manifest
    rows: np.ndarray
    meta: dict = field(default_factory=dict)  # the store group's provenance (backbone, weights, preprocess ...)
    store: FeatureStore | None = field(default=None, repr=False)  # where they came from (derived arrays are cached there)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Embeddings({self.key!r}, {len(self)} images x {self.X.shape[1]} dims)"

    @property
    def backbone(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def variant(self) -> str:
        return self.key.split("/", 1)[1]

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.manifest.tasks

    def labels(self, task: str) -> np.ndarray:
        """Given labels of ``task`` per row (``None`` where unknown)."""
        return self.manifest.task_labels(task)[self.rows]

    @property
    def groups(self) -> np.ndarray | None:
        return None if self.manifest.groups is None else self.manifest.groups[self.rows]

    @property
    def split(self) -> np.ndarray | None:
        return None if self.manifest.split is None else self.manifest.split[self.rows]

    @property
    def explore_dir(self) -> Path:
        """Default folder for this group's figures and CSVs (``explore/<backbone>__<variant>/``)."""
        if self.manifest.config is None:
            raise FeatkitError("these embeddings belong to no collection folder; pass out=... to say where to write")
        return self.manifest.config.explore_dir(self.key)

    def paths(self, index=None) -> list[Path]:
        chosen = self.ids if index is None else self.ids[np.asarray(index)]
        return self.manifest.paths(chosen)

    def task(self, task: str, *, min_classes: int = 2, include_trunk_training: bool = False) -> TaskData:
        """Rows labelled for ``task`` (a FeatkitError when fewer than ``min_classes`` classes remain).

        The images a fine-tuned trunk trained on are left out unless ``include_trunk_training``
        — for a caller that only trains on them and scores held-out rows it picks itself (the
        fine-tune probe: train + val rows to fit, the run's test rows to score).
        """
        labels = check_labels(self.manifest.task_labels(task), allow_unknown=True)
        known = np.array([v is not None for v in labels], dtype=bool)
        given = labels[self.rows]
        labelled = np.flatnonzero(known[self.rows])
        trained = None if include_trunk_training else trained_ids(self.variant, config=self.manifest.config)
        seen = np.zeros(len(labelled), bool) if trained is None else np.isin(self.ids[labelled], trained)
        index = labelled[~seen]
        y = given[index].astype(str).astype(object)
        classes = sorted(set(y.tolist()))
        if len(classes) < min_classes:
            only = f"only class {classes[0]!r}" if classes else "no labelled image"
            unseen = f" the trunk never trained on ({int(seen.sum())} it trained on are left out)" if seen.any() else ""
            raise FeatkitError(f"task {task!r} has {only} among the {len(index)} labelled images{unseen} of "
                               f"{self.key}; a classifier needs at least two classes — pick another task or label "
                               "more images")
        groups, split = self.groups, self.split
        return TaskData(
            task=task, ids=self.ids[index], X=self.X[index], y=y,
            groups=None if groups is None else groups[index], split=None if split is None else split[index],
            index=index,
            counts={"labelled": int(known.sum()), "unknown": int((~known).sum()),
                    "missing_features": int(known.sum()) - len(labelled),
                    **({"excluded_trunk_training": int(seen.sum())} if trained is not None else {}),
                    "used": len(index)},
        )


def resolve_keys(store: FeatureStore, *, backbone: str | None = None, variant: str | None = None) -> list[str]:
    """Every cached group matching ``backbone``/``variant`` (all of them when both are None)."""
    if not store.exists():
        raise FeatkitError(f"no feature store at {store.path}; run `featkit extract` first")
    keys = store.keys()
    arch = backbone.split(".", 1)[0] if backbone else None
    matches = [k for k in keys if (arch is None or k.split("/", 1)[0] == arch)
               and (variant is None or k.split("/", 1)[1] == variant)]
    if not matches:
        want = f"{arch or '*'}/{variant or '*'}"
        raise FeatkitError(f"store {store.path} has no features for {want}; it holds: {', '.join(keys) or '(nothing)'}"
                           f" (run `featkit extract --backbone {arch or 'NAME'}"
                           f"{' --variant ' + variant if variant else ''}`)")
    return matches


def resolve_key(store: FeatureStore, *, backbone: str | None = None, variant: str | None = None) -> str:
    """The one cached group for ``backbone``/``variant``; else a message naming those that exist."""
    matches = resolve_keys(store, backbone=backbone, variant=variant)
    if len(matches) > 1:
        want = f"{(backbone or '*').split('.', 1)[0]}/{variant or '*'}"
        raise FeatkitError(f"store {store.path} holds several feature sets for {want}: {', '.join(matches)}; "
                           "pick one with --backbone and --variant")
    return matches[0]


def load_embeddings(store: FeatureStore, manifest: Manifest, key: str) -> Embeddings:
    """Done rows of ``key`` whose ids are in ``manifest``, as float32."""
    features = store.load(key, ids=manifest.ids, dtype=np.float32)
    if len(features.ids) == 0:
        raise FeatkitError(f"{key} in {store.path} has no embedded image of collection {manifest.name!r}; "
                           f"run `featkit extract --backbone {key.split('/')[0]}`")
    ids = np.asarray(features.ids, dtype=str)
    return Embeddings(key=key, ids=ids, X=features.X, manifest=manifest, rows=manifest.index_of(ids),
                      meta=dict(features.meta), store=store)


def resolve_tasks(manifest: Manifest, tasks: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``None`` or ``"all"`` -> every task of the collection; otherwise check the names."""
    known = manifest.tasks
    if isinstance(tasks, str):
        tasks = tuple(t.strip() for t in tasks.split(",") if t.strip())
    if not tasks or ALL in tasks:
        if not known:
            raise FeatkitError("the collection has no tasks; add them to featkit.toml (tasks = [...])")
        return tuple(known)
    for task in tasks:
        if task not in known:
            raise FeatkitError(f"unknown task {task!r}; valid choices: {', '.join(known) or '(none)'}, {ALL}")
    return tuple(tasks)


def resolve_task(manifest: Manifest, task: str | None) -> str:
    """One task: ``task`` checked, or the collection's only task when ``task`` is None."""
    known = manifest.tasks
    if task is None or task == ALL:
        if len(known) == 1:
            return known[0]
        raise FeatkitError(f"this needs one task; pass --task with one of: {', '.join(known) or '(none)'}")
    return resolve_tasks(manifest, (task,))[0]


def names_tasks(tasks) -> bool:
    """Whether ``tasks`` names tasks explicitly (not None / "all")."""
    named = (tasks,) if isinstance(tasks, str) else tuple(tasks or ())
    return bool(named) and ALL not in named


def iter_tasks(emb: Embeddings, tasks: tuple[str, ...], *, strict: bool, skipped: list) -> Iterator[TaskData]:
    """:meth:`Embeddings.task` per task; one that cannot be explored raises when ``strict``, else is noted in ``skipped``."""
    for task in tasks:
        try:
            data = emb.task(task)
        except FeatkitError as err:
            if strict:
                raise
            skipped.append({"key": emb.key, "task": task, "reason": str(err)})
            continue
        yield data


def group_codes(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Integer code per row; rows without a group get a code of their own."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    codes = np.empty(n, dtype=np.int64)
    seen: dict[str, int] = {}
    for i, g in enumerate(groups):
        codes[i] = seen.setdefault(g, len(seen)) if g is not None else -1 - i
    return codes


__all__ = ["ALL", "Embeddings", "TaskData", "group_codes", "iter_tasks", "load_embeddings", "names_tasks", "resolve_key",
           "resolve_keys", "resolve_task", "resolve_tasks"]
