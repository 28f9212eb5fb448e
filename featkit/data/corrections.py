"""Label corrections as data: an append-only ``corrections.csv`` beside the manifest.

Every decision a curator takes (in ``featkit serve`` or a script) is one row
``id,task,old,new,time,user,queue``; ``new`` empty means "marked unknown" and
``new == old`` means "checked, the label stands". ``labels.csv`` is never edited:
readers apply the file on top of it, the latest decision per ``(id, task)`` winning
(file order is time order, since the file only grows). Appends happen under a file
lock, so two browser tabs — or two processes — deciding at once lose nothing.
"""

from __future__ import annotations

import csv
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd
from filelock import FileLock

from featkit.config import Config
from featkit.errors import FeatkitError

if TYPE_CHECKING:
    from featkit.data.manifest import Manifest

CORRECTIONS_NAME = "corrections.csv"
COLUMNS = ("id", "task", "old", "new", "time", "user", "queue")
MAX_LABEL_CHARS = 200
LOCK_TIMEOUT_S = 30.0


def corrections_path(config: Config) -> Path:
    """``corrections.csv`` beside the manifest (beside ``featkit.toml`` for image-folder collections)."""
    return config.labels_folder / CORRECTIONS_NAME


def _lock(path: Path) -> FileLock:
    return FileLock(path.with_name(path.name + ".lock"), timeout=LOCK_TIMEOUT_S)


@contextmanager
def _read_lock(path: Path) -> Iterator[None]:
    """The writers' lock, so a row being appended is never read half-written. In a folder where the
    lock file cannot be created nobody can append either, so the file is read as it is."""
    lock = _lock(path)
    try:
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _text(value, what: str, *, empty_ok: bool) -> str:
    text = "" if value is None else str(value).strip()
    if not text and not empty_ok:
        raise FeatkitError(f"a correction needs a non-empty {what}")
    if len(text) > MAX_LABEL_CHARS or any(c in text for c in "\r\n\0"):
        raise FeatkitError(f"{what} {text[:40]!r}… must be one line of at most {MAX_LABEL_CHARS} characters")
    return text


def make_correction(*, id: str, task: str, old: str | None, new: str | None, user: str = "",
                    queue: str = "", when: str | None = None) -> dict:
    """One checked row (``new`` None or "" = marked unknown)."""
    return {"id": _text(id, "image id", empty_ok=False), "task": _text(task, "task", empty_ok=False),
            "old": _text(old, "old label", empty_ok=True), "new": _text(new, "new label", empty_ok=True),
            "time": when or time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": _text(user, "user", empty_ok=True),
            "queue": _text(queue, "queue", empty_ok=True)}


def append_corrections(path: Path, rows: list[dict]) -> int:
    """Append ``rows`` (from :func:`make_correction`) under the file lock; returns how many were written."""
    path = Path(path)
    if not rows:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        new_file = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            if new_file:
                writer.writeheader()
            writer.writerows({k: row.get(k, "") for k in COLUMNS} for row in rows)
            fh.flush()
            os.fsync(fh.fileno())
    return len(rows)


def read_corrections(path: Path, *, latest: bool = True) -> pd.DataFrame:
    """The corrections file as strings; ``latest``: one row per ``(id, task)``, the last decision.

    A missing file is an empty frame with the columns.
    """
    path = Path(path)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    with _read_lock(path):
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise FeatkitError(f"corrections file {path} is not a readable CSV: {err}") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise FeatkitError(f"corrections file {path} lacks column(s) {', '.join(missing)}; "
                           f"its columns must be: {','.join(COLUMNS)}")
    frame = frame[list(COLUMNS)]
    if latest:
        frame = frame.drop_duplicates(subset=["id", "task"], keep="last")
    return frame.reset_index(drop=True)


def apply_corrections(ids, labels: dict[str, np.ndarray],
                      corrections: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict]:
    """``labels`` (task -> object array aligned with ``ids``, None = unknown) with the corrections on top.

    The inputs are not modified. The summary counts what changed:

    * ``applied`` — labels that differ from before (``by_task`` splits them per task),
      of which ``marked_unknown`` became unknown;
    * ``confirmed`` — decisions that kept the label as it was;
    * ``unknown_ids`` — ids in the corrections that are not in ``ids`` (ignored),
      ``unknown_tasks`` likewise for tasks.
    """
    latest = corrections.drop_duplicates(subset=["id", "task"], keep="last")
    by_task = {task: 0 for task in labels}
    if latest.empty:  # nothing to apply: no copy, no lookup table
        return dict(labels), {"applied": 0, "by_task": by_task, "marked_unknown": 0, "confirmed": 0,
                              "unknown_ids": [], "unknown_tasks": []}
    ids = np.asarray(ids, dtype=str)
    order = np.argsort(ids, kind="stable")  # rows found by binary search: no dict of every id
    wanted = latest["id"].to_numpy(dtype=str)
    at = np.minimum(np.searchsorted(ids, wanted, sorter=order), max(len(ids) - 1, 0))
    rows = np.where(len(ids) and ids[order[at]] == wanted, order[at], -1) if len(ids) else np.full(len(wanted), -1)
    out = {task: np.array(values, dtype=object, copy=True) for task, values in labels.items()}
    confirmed = marked_unknown = 0
    unknown_ids: list[str] = []
    unknown_tasks: set[str] = set()
    for image_id, task, new, row in zip(latest["id"], latest["task"], latest["new"], rows):
        if task not in out:
            unknown_tasks.add(task)
            continue
        if row < 0:
            unknown_ids.append(image_id)
            continue
        value = new if new else None
        if out[task][row] == value:
            confirmed += 1
            continue
        out[task][row] = value
        by_task[task] += 1
        marked_unknown += value is None
    summary = {"applied": sum(by_task.values()), "by_task": by_task, "marked_unknown": marked_unknown,
               "confirmed": confirmed, "unknown_ids": sorted(set(unknown_ids)), "unknown_tasks": sorted(unknown_tasks)}
    return out, summary


def corrections_report(summary: dict | None, tasks) -> dict:
    """What a run's report says of corrections.csv: how many of ``tasks``' labels it changed, or that it was
    ignored (``summary`` is ``Manifest.corrections``: None when the labels were read as given)."""
    if summary is None:
        return {"ignored": True, "applied": 0}
    return {"ignored": False, "file": summary["file"], "applied": sum(summary["by_task"].get(t, 0) for t in tasks),
            "marked_unknown_all_tasks": summary["marked_unknown"], "applied_all_tasks": summary["applied"]}


def corrected_manifest(collection: "Manifest", *, ids=None, corrections: bool = True) -> tuple[pd.DataFrame, dict]:
    """The manifest (every column, paths relative to the collection folder) with corrections applied.

    ``collection`` is the manifest as its file gives it (``load_manifest(config, corrections=False)``).
    ``ids`` keeps only those rows, in manifest order; an image-folder collection
    becomes a manifest with an image column and its one task column.
    """
    config = collection.config
    if config.manifest_path is not None:
        frame = pd.read_csv(config.manifest_path, dtype=str, keep_default_na=False, skipinitialspace=True)
        frame.columns = [str(c).strip() for c in frame.columns]
        frame[config.image_column] = collection.ids.tolist()
    else:
        frame = pd.DataFrame({config.image_column: collection.ids.tolist()})
        for task, values in collection.labels.items():
            frame[task] = [v or "" for v in values]
    summary = {"applied": 0, "by_task": {}, "unknown_ids": []}
    if corrections:
        labels = {task: np.array([v.strip() or None for v in frame[task]], dtype=object) for task in collection.tasks}
        fixed, summary = apply_corrections(collection.ids, labels, read_corrections(corrections_path(config)))
        for task, values in fixed.items():
            frame[task] = [v if v is not None else "" for v in values]
    if ids is not None:
        wanted = set(map(str, ids))
        missing = wanted - set(collection.ids.tolist())
        if missing:
            raise FeatkitError(f"{len(missing)} id(s) are not in collection {collection.name!r}, e.g. "
                               f"{sorted(missing)[0]!r}")
        frame = frame[frame[config.image_column].isin(wanted)]
    return frame.reset_index(drop=True), summary


def default_export_path(config: Config) -> Path:
    """``<manifest stem>.corrected.csv`` beside the manifest (``labels.corrected.csv`` beside featkit.toml)."""
    manifest = config.manifest_path
    if manifest is None:
        return config.root / "labels.corrected.csv"
    return manifest.with_name(f"{manifest.stem}.corrected.csv")


def export_corrected_manifest(collection: "Manifest", out: Path | None = None, *, ids=None) -> Path:
    """Write the corrected manifest (optionally only ``ids``) to ``out``, image paths relative to its folder."""
    config = collection.config
    out = Path(out).absolute() if out is not None else default_export_path(config)
    frame, _ = corrected_manifest(collection, ids=ids)
    root = (config.manifest_path.parent if config.manifest_path is not None else config.image_folder_path).resolve()
    if out.parent.resolve() != root:
        frame[config.image_column] = [Path(os.path.relpath(root / i, out.parent.resolve())).as_posix()
                                      for i in frame[config.image_column]]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(out)
    return out


def corrections_summary(collection: "Manifest") -> dict:
    """What the corrections file changes in ``collection`` as its file gives it (:func:`apply_corrections`'s summary)."""
    _, summary = apply_corrections(collection.ids, collection.labels,
                                   read_corrections(corrections_path(collection.config)))
    return summary
