"""A collection's labelled images: a manifest CSV or an ImageFolder tree.

A manifest has an image-path column (relative to the CSV's folder), one column per
task, and optionally a group column (object id, photographer) and a split column.
Empty label cells mean "unknown for this task". Image ids are the relative paths as
POSIX strings, so a store is addressed by id, never by row position.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from featkit.config import Config
from featkit.errors import FeatkitError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
_SPLIT_VALUES = {"train", "val", "valid", "validation", "test", "dev", "holdout"}


@dataclass(frozen=True, eq=False)
class Manifest:
    """A collection's images and labels: ids, their files, per-task labels (``None`` = unknown).

    ``ids`` is a numpy unicode array (no Python object per image); ``labels[task]``,
    ``groups`` and ``split`` are object arrays aligned with it.
    """

    name: str
    root: Path
    ids: np.ndarray
    labels: dict[str, np.ndarray]  # task -> object array of str | None
    groups: np.ndarray | None = None
    split: np.ndarray | None = None
    manifest_hash: str = ""
    source: str = ""
    config: Config | None = None
    _order: np.ndarray = field(default=None, repr=False)  # argsort of ids: lookups by binary search

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", np.asarray(self.ids, dtype=str))
        object.__setattr__(self, "_order", np.argsort(self.ids, kind="stable"))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.labels)

    def path(self, image_id: str) -> Path:
        return self.root / str(image_id)

    def paths(self, ids=None) -> list[Path]:
        """Files of ``ids`` (default: every image)."""
        return [self.root / str(i) for i in (self.ids if ids is None else ids)]

    def contains(self, image_ids) -> np.ndarray:
        """Whether each of ``image_ids`` is a row of this manifest."""
        query = np.asarray(image_ids, dtype=str).reshape(-1)
        if not len(self.ids):
            return np.zeros(len(query), dtype=bool)
        where = np.minimum(np.searchsorted(self.ids, query, sorter=self._order), len(self.ids) - 1)
        return self.ids[self._order[where]] == query

    def index_of(self, image_ids) -> np.ndarray:
        """Row positions of ``image_ids`` in this manifest (a FeatkitError names the first unknown id)."""
        query = np.asarray(image_ids, dtype=str).reshape(-1)
        found = self.contains(query)
        if not found.all():
            raise FeatkitError(f"image id {str(query[~found][0])!r} is not in collection {self.name!r}")
        return self._order[np.searchsorted(self.ids, query, sorter=self._order)].astype(np.int64)

    def task_labels(self, task: str) -> np.ndarray:
        if task not in self.labels:
            raise FeatkitError(
                f"unknown task {task!r}; valid choices: {', '.join(self.labels) or '(none)'}"
            )
        return self.labels[task]


def _hash_bytes(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _clean_id(raw: str, root: Path, row: int) -> str:
    text = raw.strip().replace("\\", "/")
    if not text:
        raise FeatkitError(f"row {row}: empty image path")
    pure = PurePosixPath(text)
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", text):
        raise FeatkitError(
            f"row {row}: image path {raw!r} is outside the collection folder {root}; "
            "paths must be relative to the manifest and stay inside its folder"
        )
    return str(pure)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FeatkitError(f"manifest {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise FeatkitError(f"manifest {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise FeatkitError(f"manifest {path} is not a readable CSV: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise FeatkitError(f"manifest {path} has a header but no rows")
    return frame


def _labels(values: pd.Series) -> np.ndarray:
    stripped = values.astype(str).str.strip()
    out = stripped.to_numpy(dtype=object)
    out[stripped.to_numpy() == ""] = None
    return out


def _from_manifest(config: Config) -> Manifest:
    path = config.manifest_path
    assert path is not None
    frame = _read_csv(path)
    needed = [config.image_column, *config.tasks, *(c for c in (config.group, config.split) if c)]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise FeatkitError(
            f"column(s) {', '.join(repr(c) for c in missing)} not in {path.name}; "
            f"its columns are: {', '.join(frame.columns)}"
        )
    root = path.parent.resolve()
    ids = [_clean_id(raw, root, i + 2) for i, raw in enumerate(frame[config.image_column])]
    dupes = pd.Series(ids)[pd.Series(ids).duplicated()].unique()
    if len(dupes):
        shown = ", ".join(repr(d) for d in dupes[:5])
        more = f" (and {len(dupes) - 5} more)" if len(dupes) > 5 else ""
        raise FeatkitError(f"duplicate image ids in {path.name}: {shown}{more}; each image may appear once")
    tasks = config.tasks or ()
    return Manifest(
        name=config.name,
        root=root,
        ids=np.asarray(ids, dtype=str),
        labels={task: _labels(frame[task]) for task in tasks},
        groups=_labels(frame[config.group]) if config.group else None,
        split=_labels(frame[config.split]) if config.split else None,
        manifest_hash=_hash_bytes(path.read_bytes()),
        source=str(path),
        config=config,
    )


def _from_image_folder(config: Config) -> Manifest:
    folder = config.image_folder_path
    assert folder is not None
    if not folder.is_dir():
        raise FeatkitError(f"image folder {folder} does not exist")
    root = folder.resolve()
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and len(p.relative_to(root).parts) >= 2
    )
    if not files:
        raise FeatkitError(
            f"image folder {folder} holds no images in class sub-folders "
            f"(expected {folder}/<class>/<image>{IMAGE_EXTENSIONS[0]})"
        )
    ids = [p.relative_to(root).as_posix() for p in files]
    task = (config.tasks or ("label",))[0]
    classes = np.array([image_id.split("/")[0] for image_id in ids], dtype=object)
    return Manifest(
        name=config.name,
        root=root,
        ids=np.asarray(ids, dtype=str),
        labels={task: classes},
        manifest_hash=_hash_bytes("\n".join(ids).encode()),
        source=str(folder),
        config=config,
    )


def load_manifest(config: Config) -> Manifest:
    """Read the collection ``config`` describes, with clear errors for bad manifests."""
    if config.manifest is not None:
        return _from_manifest(config)
    if config.image_folder is not None:
        return _from_image_folder(config)
    raise FeatkitError("the configuration names neither a manifest CSV nor an image folder")


# -- inference for `featkit init` ------------------------------------------------------
def _looks_like_paths(values: pd.Series) -> bool:
    sample = values[values.str.strip() != ""].head(50)
    return len(sample) > 0 and sample.str.lower().str.endswith(IMAGE_EXTENSIONS).mean() > 0.9


def _n_classes(values: pd.Series) -> int:
    """Distinct labels, not counting empty cells (unknown)."""
    stripped = values.str.strip()
    return int(stripped[stripped != ""].nunique())


def infer_config(
    manifest: Path,
    *,
    root: Path,
    name: str | None = None,
    image_column: str | None = None,
    tasks: tuple[str, ...] | None = None,
    group: str | None = None,
    split: str | None = None,
    store: Path | None = None,
) -> tuple[Config, list[str]]:
    """Build a :class:`Config` for ``manifest``, inferring what was not given.

    Returns the config and human-readable notes about each inference.
    """
    frame = _read_csv(manifest)
    notes: list[str] = []
    columns = list(frame.columns)

    def check(col: str | None, what: str) -> None:
        if col is not None and col not in columns:
            raise FeatkitError(f"{what} column {col!r} not in {manifest.name}; its columns are: {', '.join(columns)}")

    check(image_column, "image")
    check(group, "group")
    check(split, "split")
    for task in tasks or ():
        check(task, "task")

    if image_column is None:
        candidates = [c for c in columns if _looks_like_paths(frame[c])]
        preferred = [c for c in candidates if c.lower() in ("image", "path", "file", "filename", "image_path")]
        pick = (preferred or candidates or [None])[0]
        if pick is None:
            raise FeatkitError(
                f"cannot tell which column of {manifest.name} holds image paths; pass --image-column "
                f"(columns: {', '.join(columns)})"
            )
        image_column = pick
        notes.append(f"image column: {image_column!r}")
    if split is None:
        for col in columns:
            values = set(frame[col].str.strip().str.lower()) - {""}
            if col != image_column and values and values <= _SPLIT_VALUES:
                split = col
                notes.append(f"split column: {split!r} ({', '.join(sorted(values))})")
                break
    if group is None:
        for col in columns:
            lower = col.lower()
            if col in (image_column, split):
                continue
            if lower in ("group", "object", "object_id") or lower.endswith("_id"):
                if frame[col].duplicated().any():
                    group = col
                    notes.append(f"group column: {group!r} (rows sharing it never straddle a split)")
                    break
    if not tasks:
        skip = {image_column, split, group}
        tasks = tuple(
            c for c in columns
            if c not in skip and not _looks_like_paths(frame[c])
            and 2 <= _n_classes(frame[c]) < max(3, 0.5 * len(frame))
        )
        notes.append(f"tasks: {', '.join(tasks) or '(none found: pass --tasks)'}")
    if not tasks:
        raise FeatkitError(f"no task columns found in {manifest.name}; pass --tasks a,b (columns: {', '.join(columns)})")
    root = root.resolve()
    try:
        rel_manifest = manifest.resolve().relative_to(root)
    except ValueError:
        rel_manifest = manifest.resolve()
    config = Config(
        root=root,
        name=name or (manifest.resolve().parent.name or "collection"),
        manifest=rel_manifest,
        image_column=image_column,
        tasks=tuple(tasks),
        group=group,
        split=split,
        store=store,
    )
    return config, notes
