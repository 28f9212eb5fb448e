"""What every exploration reads: a store group's embeddings lined up with the collection.

Rows are addressed by image id: the done rows of a group that are still in the
collection, in store order, with their labels, groups and split values beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from featkit.config import Config
from featkit.data.manifest import Collection, load_collection
from featkit.errors import FeatkitError
from featkit.store import FeatureStore

ALL = "all"


@dataclass(frozen=True, eq=False)
class Embeddings:
    """``X[i]`` embeds ``ids[i]``; ``rows[i]`` is that image's position in ``collection``."""

    key: str
    ids: np.ndarray
    X: np.ndarray
    collection: Collection
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self, task: str) -> np.ndarray:
        return self.collection.task_labels(task)[self.rows]

    @property
    def groups(self) -> np.ndarray | None:
        return None if self.collection.groups is None else self.collection.groups[self.rows]

    @property
    def split(self) -> np.ndarray | None:
        return None if self.collection.split is None else self.collection.split[self.rows]

    def paths(self, index=None) -> list[Path]:
        chosen = self.ids if index is None else self.ids[np.asarray(index)]
        return [self.collection.path(str(i)) for i in chosen]


@dataclass(frozen=True, eq=False)
class TaskView:
    """The labelled rows of one task: ``X[i]`` has class ``y[i]``; ``index`` points into the Embeddings."""

    task: str
    index: np.ndarray
    X: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    groups: np.ndarray | None


def store_of(config: Config) -> FeatureStore:
    store = FeatureStore(config.store_path)
    if not store.exists():
        raise FeatkitError(f"no feature store at {store.path}; run `featkit extract` first")
    return store


def resolve_keys(config: Config, *, backbone: str | None = None, variant: str | None = None) -> list[str]:
    """Every cached group matching ``backbone``/``variant`` (all of them when both are None)."""
    store = store_of(config)
    keys = store.keys()
    if backbone is None and variant is None:
        if not keys:
            raise FeatkitError(f"store {store.path} holds no features yet; run `featkit extract` first")
        return keys
    matches = [k for k in keys
               if (backbone is None or k.split("/", 1)[0] == backbone.split(".", 1)[0])
               and (variant is None or k.split("/", 1)[1] == variant)]
    if not matches:
        want = f"{backbone or '*'}/{variant or '*'}"
        raise FeatkitError(f"store {store.path} has no features for {want}; it holds: {', '.join(keys) or '(nothing)'}"
                           f" (run `featkit extract --backbone {(backbone or 'NAME').split('.', 1)[0]}`)")
    return matches


def resolve_key(config: Config, *, backbone: str | None = None, variant: str | None = None) -> str:
    """The one cached group for ``backbone``/``variant`` (the store's own clear errors otherwise)."""
    return store_of(config).resolve_key(backbone, variant)


def load_embeddings(config: Config, *, key: str, collection: Collection | None = None) -> Embeddings:
    """Done rows of ``key`` whose ids are in the collection (float32)."""
    collection = collection or load_collection(config)
    features = store_of(config).load(key, ids=collection.ids, dtype=np.float32)
    if len(features.ids) == 0:
        raise FeatkitError(f"{key} in {config.store_path} has no embedded image of collection {collection.name!r}; "
                           f"run `featkit extract --backbone {key.split('/')[0]}`")
    return Embeddings(key=key, ids=features.ids, X=features.X, collection=collection,
                      rows=collection.index_of(features.ids))


def resolve_tasks(config: Config, tasks: str | tuple[str, ...] | list[str] | None,
                  collection: Collection | None = None) -> tuple[str, ...]:
    """``None`` or ``"all"`` -> every task of the collection; otherwise check the names."""
    known = collection.tasks if collection is not None else config.tasks
    if isinstance(tasks, str):
        tasks = (tasks,)
    if not tasks or ALL in tasks:
        if not known:
            raise FeatkitError("the collection has no tasks; add them to featkit.toml (tasks = [...])")
        return tuple(known)
    for task in tasks:
        if task not in known:
            raise FeatkitError(f"unknown task {task!r}; valid choices: {', '.join(known) or '(none)'}, {ALL}")
    return tuple(tasks)


def resolve_task(config: Config, task: str | None, collection: Collection | None = None) -> str:
    """One task: ``task`` checked, or the collection's only task when ``task`` is None."""
    known = collection.tasks if collection is not None else config.tasks
    if task is None or task == ALL:
        if len(known) == 1:
            return known[0]
        raise FeatkitError(f"this needs one task; pass --task with one of: {', '.join(known) or '(none)'}")
    return resolve_tasks(config, task, collection)[0]


def task_view(emb: Embeddings, task: str, *, min_per_class: int = 1) -> TaskView:
    """Rows of ``emb`` labelled for ``task``; a task needs two classes to be explored."""
    labels = emb.labels(task)
    index = np.flatnonzero(np.array([v is not None for v in labels], dtype=bool))
    y = labels[index].astype(str)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        only = f"only class {str(classes[0])!r}" if len(classes) else "no labelled image"
        raise FeatkitError(f"task {task!r} has {only} among the {len(index)} embedded images of {emb.key}; "
                           "separating classes needs at least two — pick another --task")
    if min_per_class > 1 and counts.min() < min_per_class:
        rare = ", ".join(f"{str(c)!r} ({n})" for c, n in zip(classes, counts) if n < min_per_class)
        raise FeatkitError(f"task {task!r}: class(es) {rare} have fewer than {min_per_class} labelled images; "
                           f"this needs at least {min_per_class} per class")
    groups = emb.groups
    return TaskView(task=task, index=index, X=emb.X[index], y=y, classes=tuple(str(c) for c in classes),
                    groups=None if groups is None else groups[index])


def names_tasks(tasks) -> bool:
    """Whether ``tasks`` names tasks explicitly (not None / "all")."""
    named = (tasks,) if isinstance(tasks, str) else tuple(tasks or ())
    return bool(named) and ALL not in named


def iter_task_views(emb: Embeddings, tasks: tuple[str, ...], *, strict: bool, skipped: list) -> Iterator[TaskView]:
    """A :class:`TaskView` per task; one that cannot be explored raises when ``strict``, else is noted in ``skipped``."""
    for task in tasks:
        try:
            view = task_view(emb, task)
        except FeatkitError as err:
            if strict:
                raise
            skipped.append({"key": emb.key, "task": task, "reason": str(err)})
            continue
        yield view


def group_codes(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Integer code per row; rows without a group get a code of their own."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    codes = np.empty(n, dtype=np.int64)
    seen: dict[str, int] = {}
    for i, g in enumerate(groups):
        codes[i] = seen.setdefault(g, len(seen)) if g is not None else -1 - i
    return codes


def key_folder(key: str) -> str:
    """``mobilenet_v2/imagenet1k_v1`` -> ``mobilenet_v2__imagenet1k_v1`` (one folder per group)."""
    return key.replace("/", "__")


def default_out(config: Config, key: str) -> Path:
    return config.root / "explore" / key_folder(key)
