"""A collection's labelled images: a manifest CSV or an ImageFolder tree.

A manifest has an image-path column (relative to the CSV's folder), one column per
task, and optionally a group column (object id, photographer) and a split column.
Empty label cells mean "unknown for this task". Image ids are the relative paths as
POSIX strings, so a store is addressed by id, never by row position.

A manifest is read as spreadsheets write it: the delimiter (``,`` ``;`` tab ``|``) is
sniffed, a UTF-8 or UTF-16 byte-order mark is honoured, and what cannot be read is named
where it is (the row and column of a non-UTF-8 byte, a repeated header, a row with too
many fields, an image path outside the manifest's folder).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import posixpath
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from featkit.config import CONFIG_NAME, Config
from featkit.data.corrections import apply_corrections, corrections_path, read_corrections
from featkit.data.images import ImageLoadError, open_image_file
from featkit.errors import FeatkitError
from featkit.paths import safe_name, slug

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
    corrections: dict | None = None  # what corrections.csv changed in ``labels`` (None: not applied)
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


def _outside(raw: str, root: Path, row: int) -> FeatkitError:
    return FeatkitError(
        f"row {row}: image path {raw!r} is outside the collection folder {root}; images must lie inside the "
        "manifest's folder (write paths relative to it; a linked sub-folder such as images/ is fine)"
    )


def _clean_id(raw: str, folders: tuple[Path, ...], row: int) -> str:
    """The image id of manifest cell ``raw``: a normalised POSIX path relative to the manifest's folder.

    ``folders`` are that folder as written and resolved: an absolute path below either is
    made relative (compared as text, so a linked ``images/`` on another disk stays inside), as is
    one that resolves into the folder (written through a link to the collection).
    """
    text = raw.strip().replace("\\", "/")
    root = folders[-1]
    if not text:
        raise FeatkitError(f"row {row}: empty image path")
    if re.match(r"^[A-Za-z]:/", text):
        raise FeatkitError(f"row {row}: image path {raw!r} is a Windows path with a drive letter; write it relative "
                           f"to the manifest's folder {root}")
    if text.startswith("/"):
        absolute = PurePosixPath(posixpath.normpath(text))
        base = next((f for f in folders if absolute.is_relative_to(f.as_posix())), None)
        if base is not None:
            text = str(absolute.relative_to(base.as_posix()))
        elif Path(absolute).resolve().is_relative_to(root):  # written through a link to the collection
            text = Path(absolute).resolve().relative_to(root).as_posix()
        else:
            raise _outside(raw, root, row)
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../"):
        raise _outside(raw, root, row)
    if norm == ".":
        raise FeatkitError(f"row {row}: image path {raw!r} names the collection folder itself, not an image")
    return norm


@dataclass(frozen=True)
class _Table:
    frame: pd.DataFrame
    raw: bytes
    delimiter: str


def _decode(raw: bytes, path: Path) -> str:
    """The manifest's text: UTF-8 (a UTF-8 or UTF-16 byte-order mark is honoured), else an error naming the spot.

    Other encodings are refused, not guessed: Latin-1, Windows-1252 and Mac Roman read the
    same bytes as different letters, and a label or image path read with the wrong one would
    silently be a different class or a file that does not exist.
    """
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as err:
            raise FeatkitError(f"manifest {path} starts like UTF-16 but is not ({err.reason}); save it as UTF-8") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FeatkitError(_not_utf8(raw, err, path)) from None
    if "\x00" in text:
        row = text.count("\n", 0, text.index("\x00")) + 1
        raise FeatkitError(f"manifest {path} has NUL bytes (row {row}): it is UTF-16 without a byte-order mark or not "
                           "a text file; save it as UTF-8 CSV")
    return text


def _not_utf8(raw: bytes, err: UnicodeDecodeError, path: Path) -> str:
    """Where the first non-UTF-8 byte is: row (line of the file, as a spreadsheet numbers it) and column."""
    start = raw.rfind(b"\n", 0, err.start) + 1
    before = raw[:err.start].decode("utf-8")  # valid: the error is the first one
    delimiter = _delimiter(before)
    header = next(csv.reader([before.split("\n", 1)[0].rstrip("\r")], delimiter=delimiter), [])
    cells = next(csv.reader([raw[start:err.start].decode("utf-8")], delimiter=delimiter), [""])
    col = max(len(cells) - 1, 0)
    row = raw.count(b"\n", 0, err.start) + 1
    end = min((i for i in (raw.find(delimiter.encode(), err.start), raw.find(b"\n", err.start)) if i >= 0),
              default=len(raw))
    cell = (cells[-1].encode() if cells else b"") + raw[err.start:end]
    where = f"column {header[col]!r}" if row > 1 and col < len(header) else f"column {col + 1}"
    return (f"manifest {path} is not UTF-8: row {row}, {where} holds byte 0x{raw[err.start]:02X} "
            f"({cell.decode('cp1252', 'replace').strip()!r} if it is Latin-1/Windows-1252); save it as UTF-8 "
            "(in Excel: Save As, CSV UTF-8)")


_DELIMITERS = ",;\t|"


def _delimiter(text: str) -> str:
    """The field separator, sniffed from the first 64 KiB (``,`` when nothing else is consistent)."""
    sample = text[:1 << 16]
    if len(text) > len(sample):
        sample = sample[:sample.rfind("\n") + 1] or sample
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _too_many(path: Path, row: int, fields: int, columns: int, delimiter: str) -> str:
    return (f"manifest {path}: row {row} has {fields} fields but the header has {columns}; a value holding "
            f"{delimiter!r} must be in double quotes")


def _read_csv(path: Path) -> _Table:
    if not path.exists():
        raise FeatkitError(f"manifest {path} does not exist")
    try:
        with open_image_file(path) as fh:  # refuses a FIFO or a device before opening it
            raw = fh.read()
    except ImageLoadError as err:
        raise FeatkitError(f"manifest {path} cannot be read: {err}") from None
    text = _decode(raw, path)
    delimiter = _delimiter(text)
    rows = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip() for h in next(rows, [])]
    for name in dict.fromkeys(h for h in header if h):
        where = [str(i + 1) for i, h in enumerate(header) if h == name]
        if len(where) > 1:
            raise FeatkitError(f"manifest {path} has {len(where)} columns named {name!r} (columns "
                               f"{', '.join(where[:-1])} and {where[-1]}); rename all but one")
    first = next(rows, [])
    if len(first) > len(header):  # pandas would silently take the first column as an index
        raise FeatkitError(_too_many(path, rows.line_num, len(first), len(header), delimiter))
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False,
                            skipinitialspace=True, index_col=False)
    except pd.errors.EmptyDataError:
        raise FeatkitError(f"manifest {path} is empty") from None
    except pd.errors.ParserError as err:
        fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if fields:
            n, row, saw = map(int, fields.groups())
            raise FeatkitError(_too_many(path, row, saw, n, delimiter)) from None
        raise FeatkitError(f"manifest {path} is not a readable CSV: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]  # duplicates were refused above, so none renamed
    if frame.empty:
        raise FeatkitError(f"manifest {path} has a header but no rows")
    return _Table(frame, raw, delimiter)


def _labels(values: pd.Series) -> np.ndarray:
    stripped = values.astype(str).str.strip()
    out = stripped.to_numpy(dtype=object)
    out[stripped.to_numpy() == ""] = None
    return out


def _from_manifest(config: Config) -> Manifest:
    path = config.manifest_path
    assert path is not None
    table = _read_csv(path)
    frame = table.frame
    needed = [("image_column", config.image_column), *(("tasks", t) for t in config.tasks),
              *((key, c) for key, c in (("group", config.group), ("split", config.split)) if c)]
    missing = [f"{c!r} ({key})" for key, c in needed if c not in frame.columns]
    if missing:
        raise FeatkitError(
            f"{path.name} has no column {', '.join(missing)}, named by [collection] in {CONFIG_NAME} or a flag; "
            f"its columns are: {', '.join(frame.columns)}"
        )
    root = path.parent.resolve()
    folders = tuple(dict.fromkeys((Path(os.path.abspath(path)).parent, root)))
    ids = [_clean_id(raw, folders, i + 2) for i, raw in enumerate(frame[config.image_column])]
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
        manifest_hash=_hash_bytes(table.raw),
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


def load_manifest(config: Config, *, corrections: bool = True) -> Manifest:
    """Read the collection ``config`` describes, with clear errors for bad manifests.

    With ``corrections`` (the default), the decisions recorded in ``corrections.csv``
    beside the manifest (:mod:`featkit.data.corrections`) are applied on top of the labels
    it gives, and ``Manifest.corrections`` says what they changed; ``labels.csv`` itself is
    never edited. ``corrections=False`` reads the labels exactly as the manifest gives them.
    """
    if config.manifest is not None:
        manifest = _from_manifest(config)
    elif config.image_folder is not None:
        manifest = _from_image_folder(config)
    else:
        raise FeatkitError("the configuration names neither a manifest CSV nor an image folder")
    if not corrections:
        return manifest
    path = corrections_path(config)
    labels, summary = apply_corrections(manifest.ids, manifest.labels, read_corrections(path))
    summary = {"file": str(path), **summary, "unknown_ids": len(summary["unknown_ids"])}
    return replace(manifest, labels=labels, corrections=summary)


# -- inference for `featkit init` ------------------------------------------------------
_IMAGE_COLUMN_NAMES = ("image", "images", "img", "path", "file", "filename", "file_name", "filepath", "image_path")


def _image_share(values: pd.Series) -> float:
    """Share of the first 50 non-empty cells that end with a known image extension."""
    sample = values[values.str.strip() != ""].head(50)
    return float(sample.str.strip().str.lower().str.endswith(IMAGE_EXTENSIONS).mean()) if len(sample) else 0.0


def _looks_like_paths(values: pd.Series, *, named: bool = False) -> bool:
    """Image paths: over 90 % known extensions, or a majority in a column named like ``image``
    (so one ``.jp2`` among nine rows does not hide the column literally called image)."""
    return _image_share(values) > (0.5 if named else 0.9)


def _unknown_extensions(values: pd.Series) -> str:
    """A note on paths with extensions featkit does not list (extract still tries to decode them)."""
    cells = values.str.strip()
    cells = cells[cells != ""]
    odd = cells[~cells.str.lower().str.endswith(IMAGE_EXTENSIONS)]
    if odd.empty:
        return ""
    kinds = sorted(set(odd.map(lambda v: PurePosixPath(v).suffix.lower() or "(none)")))
    return (f" ({len(odd)} of {len(cells)} paths have another extension: {', '.join(kinds[:5])}; extract decodes "
            "what Pillow can and records the rest as failures)")


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
    table = _read_csv(manifest)
    frame = table.frame
    notes: list[str] = [] if table.delimiter == "," else [f"delimiter: {table.delimiter!r} (sniffed)"]
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
        named = [c for c in columns if c.lower() in _IMAGE_COLUMN_NAMES and _looks_like_paths(frame[c], named=True)]
        pick = (named or [c for c in columns if _looks_like_paths(frame[c])] or [None])[0]
        if pick is None:
            raise FeatkitError(
                f"cannot tell which column of {manifest.name} holds image paths (none has mostly "
                f"{', '.join(IMAGE_EXTENSIONS)} files); pass --image-column (columns: {', '.join(columns)})"
            )
        image_column = pick
        notes.append(f"image column: {image_column!r}{_unknown_extensions(frame[image_column])}")
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
    if name is None:
        name = slug(manifest.resolve().parent.name or "collection")
        notes.append(f"collection name: {name!r} (its folder's name; --name to choose another)")
    config = Config(
        root=root,
        name=safe_name(name, what="collection name"),
        manifest=rel_manifest,
        image_column=image_column,
        tasks=tuple(tasks),
        group=group,
        split=split,
        store=store,
    )
    return config, notes
