"""The HDF5 feature store: one file per collection, a group per backbone/variant.

Layout (readable with plain h5py)::

    <store>.h5
      <backbone>/<variant>/          e.g. mobilenet_v2/imagenet1k_v1
        ids        (n,)      utf-8 image ids (relative paths)
        features   (n, dim)  float32 or float16, row-chunked, resizable
        done       (n,)      bool: the row holds a computed embedding
        failures/ids, failures/errors   images that could not be embedded, and why
        aux/<name>             derived arrays (e.g. UMAP coordinates) with their parameters
        attrs: backbone, variant, weights, weights_sha256, preprocess (JSON),
               preprocess_fingerprint, dim, featkit_version, manifest_hash, created, updated

Crash safety. The .h5 file is never modified in place. A writer appends each batch
to a write-ahead log (``<store>.wal``: length- and CRC-framed records, flushed per
batch) and *checkpoints* by copying the .h5, applying the log to the copy and
``os.replace``-ing it over the original, then deleting the log. kill -9 at any
moment leaves the last checkpoint intact plus a log whose torn tail is ignored; the
next writer (or reader) replays the log. Applying the log is idempotent.

One writer at a time: an exclusive lock on ``<store>.lock`` (released by the OS when
a writer dies), refused with a clear message when held.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
from filelock import FileLock, Timeout

from featkit._version import __version__
from featkit.errors import FeatkitError

_MAGIC = b"FKW1"
_HEAD = struct.Struct("<4sQI")  # magic, payload length, crc32(payload)
_STR = h5py.string_dtype("utf-8")
CHUNK_ROWS = 256
RECOVERY_WAIT_SECONDS = 60.0  # a writer waits this long for a reader replaying a dead writer's log


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class GroupMeta:
    """What makes a group's rows comparable; a writer must agree with what is stored."""

    backbone: str
    variant: str
    weights: str
    weights_sha256: str
    preprocess: dict
    preprocess_fingerprint: str
    dim: int
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    def attrs(self) -> dict:
        out = {
            "backbone": self.backbone,
            "variant": self.variant,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "preprocess": json.dumps(self.preprocess, sort_keys=True),
            "preprocess_fingerprint": self.preprocess_fingerprint,
            "dim": self.dim,
            "dtype": self.dtype,
        }
        out.update({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in self.extra.items()})
        return out


@dataclass
class FeatureSet:
    """Features of done rows: ``X[i]`` is the embedding of ``ids[i]``."""

    key: str
    ids: np.ndarray
    X: np.ndarray
    meta: dict


# -- the write-ahead log -----------------------------------------------------------------
def _encode(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header, default=_json_default).encode()
    payload = struct.pack("<I", len(head)) + head + body
    return _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _iter_wal(path: Path) -> Iterator[tuple[dict, bytes, int]]:
    """Valid records and the offset after each; stops at the first torn or corrupt one."""
    if not path.exists():
        return
    with open(path, "rb") as fh:
        offset = 0
        while True:
            raw = fh.read(_HEAD.size)
            if len(raw) < _HEAD.size:
                return
            magic, length, crc = _HEAD.unpack(raw)
            if magic != _MAGIC:
                return
            payload = fh.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            (hlen,) = struct.unpack_from("<I", payload)
            header = json.loads(payload[4 : 4 + hlen])
            offset += _HEAD.size + length
            yield header, payload[4 + hlen :], offset


class FeatureStore:
    """An HDF5 feature cache; see the module docstring for layout and crash safety."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.wal_path = self.path.with_name(self.path.name + ".wal")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.owner_path = self.path.with_name(self.path.name + ".owner")

    # -- reading ---------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.exists() or self.wal_path.exists()

    def _open_read(self) -> h5py.File:
        self.recover()
        if not self.path.exists():
            raise FeatkitError(f"no feature store at {self.path}; run `featkit extract` first")
        try:
            return h5py.File(self.path, "r", locking=False)
        except OSError as err:
            raise FeatkitError(f"cannot open feature store {self.path}: {err}") from None

    def recover(self) -> bool:
        """Replay a log left by a writer that died; a no-op while a writer is alive."""
        if not self.wal_path.exists():
            return False
        lock = FileLock(self.lock_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False  # a live writer owns the log
        try:
            self.owner_path.unlink(missing_ok=True)  # we hold the lock: whoever wrote it is gone
            self._checkpoint()
        except OSError:
            return False  # a read-only store: its last checkpoint is still whole
        finally:
            lock.release()
        return True

    def keys(self) -> list[str]:
        """Groups holding features, as ``backbone/variant``."""
        if not self.exists():
            return []
        with self._open_read() as f:
            found = []
            f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Group) and "features" in obj else None)
            return sorted(found)

    def meta(self, key: str) -> dict:
        with self._open_read() as f:
            return _group_meta(self._group(f, key))

    def _group(self, f: h5py.File, key: str) -> h5py.Group:
        if key not in f or "features" not in f[key]:
            have = []
            f.visititems(lambda name, obj: have.append(name) if isinstance(obj, h5py.Group) and "features" in obj else None)
            raise FeatkitError(
                f"store {self.path} has no features for {key!r}; it holds: {', '.join(have) or '(nothing yet)'}"
                f" (run `featkit extract --backbone {key.split('/')[0]}`)"
            )
        return f[key]

    def resolve_key(self, backbone: str | None = None, variant: str | None = None) -> str:
        """The one group matching ``backbone``/``variant``; else a message naming those that exist."""
        keys = self.keys()
        matches = [
            k for k in keys
            if (backbone is None or k.split("/", 1)[0] == backbone.split(".", 1)[0])
            and (variant is None or k.split("/", 1)[1] == variant)
        ]
        if len(matches) == 1:
            return matches[0]
        want = "/".join(p for p in (backbone or "*", variant or "*"))
        if not matches:
            raise FeatkitError(
                f"store {self.path} has no features for {want}; it holds: {', '.join(keys) or '(nothing yet)'}"
            )
        raise FeatkitError(
            f"store {self.path} holds several feature sets for {want}: {', '.join(matches)}; "
            "pick one with --backbone and --variant"
        )

    def load(self, key: str, ids=None, *, dtype=None, chunk_rows: int = 8192) -> FeatureSet:
        """Done rows of ``key`` (optionally only ``ids``, in store order), read in chunks.

        ``X`` keeps the stored dtype (float16 stores load at half the memory) unless
        ``dtype`` asks for another; :meth:`memory_needed` says how many bytes that is.
        """
        with self._open_read() as f:
            group = self._group(f, key)
            all_ids, rows = _done_rows(group, ids)
            feats = group["features"]
            X = np.empty((len(rows), feats.shape[1]), dtype=dtype or feats.dtype)
            for start in range(0, len(rows), chunk_rows):
                sel = rows[start : start + chunk_rows]
                if len(sel) and sel[-1] - sel[0] + 1 == len(sel):
                    X[start : start + len(sel)] = feats[sel[0] : sel[-1] + 1]
                elif len(sel):
                    X[start : start + len(sel)] = feats[sel]
            return FeatureSet(key=key, ids=all_ids[rows], X=X, meta=_group_meta(group))

    def memory_needed(self, key: str, ids=None, *, dtype=None) -> int:
        """Bytes of the ``X`` that :meth:`load` would return (stored dtype unless ``dtype``)."""
        with self._open_read() as f:
            group = self._group(f, key)
            _, rows = _done_rows(group, ids)
            feats = group["features"]
            return len(rows) * feats.shape[1] * np.dtype(dtype or feats.dtype).itemsize

    def status(self, key: str) -> dict:
        """Ids, done flags and failures of one group (no features read)."""
        with self._open_read() as f:
            group = self._group(f, key)
            ids = group["ids"].asstr()[:]
            return {"ids": ids, "done": group["done"][:], "failures": _read_failures(group)}

    def read_aux(self, key: str, name: str) -> tuple[np.ndarray, dict] | None:
        """A derived array stored beside ``key``'s features, with its attributes."""
        if not self.exists():
            return None
        with self._open_read() as f:
            path = f"{key}/aux/{name}"
            if path not in f:
                return None
            ds = f[path]
            return ds[()], dict(ds.attrs)

    def info(self) -> dict:
        """A summary of every group, for ``featkit info``."""
        if not self.exists():
            raise FeatkitError(f"no feature store at {self.path}; run `featkit extract` first")
        out = {"path": str(self.path), "size_bytes": self.path.stat().st_size if self.path.exists() else 0, "groups": []}
        with self._open_read() as f:
            out["attrs"] = {k: _plain(v) for k, v in f.attrs.items()}
            for key in self.keys():
                group = f[key]
                n = group["ids"].shape[0]
                done = int(group["done"][:].sum())
                failures = _read_failures(group)
                aux = sorted(group["aux"].keys()) if "aux" in group else []
                out["groups"].append(
                    {"key": key, "rows": n, "done": done, "failed": len(failures), "pending": n - done - len(failures),
                     "dim": int(group["features"].shape[1]), "dtype": str(group["features"].dtype),
                     "aux": aux, **_group_meta(group)}
                )
        return out

    # -- writing ---------------------------------------------------------------------
    def writer(self) -> "StoreWriter":
        return StoreWriter(self)

    def _checkpoint(self) -> int:
        """Apply the log to a copy of the file and swap it in. Caller holds the lock."""
        records = 0
        if not self.wal_path.exists():
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # left by a writer killed mid-checkpoint
            stale.unlink(missing_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        if self.path.exists():
            shutil.copyfile(self.path, tmp)
        try:
            with h5py.File(tmp, "a", locking=False) as f:
                f.attrs.setdefault("featkit_version", __version__)
                f.attrs.setdefault("created", _now())
                replay = _Replay(f)
                for header, body, _ in _iter_wal(self.wal_path):
                    replay.apply(header, body)
                    records += 1
                replay.finish()
                f.attrs["updated"] = _now()
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
            self.wal_path.unlink(missing_ok=True)
        finally:
            if tmp.exists():
                tmp.unlink()
        return records


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _group_meta(group: h5py.Group) -> dict:
    meta = {k: _plain(v) for k, v in group.attrs.items()}
    if isinstance(meta.get("preprocess"), str):
        meta["preprocess"] = json.loads(meta["preprocess"])
    return meta


def _done_rows(group: h5py.Group, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """All ids of ``group`` and the positions of its done rows (only ``ids``, if given)."""
    all_ids = group["ids"].asstr()[:]
    rows = np.flatnonzero(group["done"][:])
    if ids is not None:
        wanted = set(ids)
        rows = rows[np.fromiter((all_ids[r] in wanted for r in rows), bool, count=len(rows))]
    return all_ids, rows


def _read_failures(group: h5py.Group) -> dict[str, str]:
    if "failures" not in group:
        return {}
    ids = group["failures/ids"].asstr()[:]
    errors = group["failures/errors"].asstr()[:]
    return dict(zip(ids, errors))


def _write_failures(group: h5py.Group, updates: dict) -> None:
    current = _read_failures(group)
    for image_id, error in updates.items():
        if error is None:
            current.pop(image_id, None)
        else:
            current[image_id] = error
    if "failures" in group:
        del group["failures"]
    fail = group.create_group("failures")
    fail.create_dataset("ids", data=np.array(list(current), dtype=object), dtype=_STR)
    fail.create_dataset("errors", data=np.array(list(current.values()), dtype=object), dtype=_STR)


class _Replay:
    """Applies log records to an open file.

    Each group's id index and done flags are read once per checkpoint, not once per
    record, so folding thousands of batches into a large store stays linear.
    """

    def __init__(self, f: h5py.File) -> None:
        self.f = f
        self._index: dict[str, dict[str, int]] = {}
        self._done: dict[str, np.ndarray] = {}
        self._failures: dict[str, dict[str, str | None]] = {}

    def _flush(self, key: str) -> None:
        if key in self._done:
            self.f[key]["done"][:] = self._done.pop(key)
        self._index.pop(key, None)

    def finish(self) -> None:
        for key in list(self._done):
            self._flush(key)
        for key, upd in self._failures.items():
            _write_failures(self.f[key], upd)

    def apply(self, header: dict, body: bytes) -> None:
        kind = header["type"]
        key = header["key"]
        if kind == "group":
            self._group(key, header)
        elif kind == "rows":
            self._rows(key, header, body)
        elif kind == "aux":
            group = self.f[key]
            path = f"aux/{header['name']}"
            if path in group:
                del group[path]
            data = np.frombuffer(body, dtype=header["dtype"]).reshape(header["shape"])
            ds = group.create_dataset(path, data=data)
            for name, value in header.get("attrs", {}).items():
                ds.attrs[name] = value
        else:  # pragma: no cover - only featkit writes logs
            raise FeatkitError(f"unknown record type {kind!r} in {self.f.filename}")

    def _group(self, key: str, header: dict) -> None:
        f = self.f
        self._flush(key)
        meta = header["meta"]
        dim = int(meta["dim"])
        if key not in f:
            group = f.create_group(key)
            group.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(4096,))
            group.create_dataset("features", shape=(0, dim), maxshape=(None, dim), dtype=meta.get("dtype", "float32"),
                                 chunks=(CHUNK_ROWS, dim))
            group.create_dataset("done", shape=(0,), maxshape=(None,), dtype=bool, chunks=(4096,))
            group.attrs["created"] = _now()
            group.attrs["featkit_version"] = __version__
        group = f[key]
        for name, value in meta.items():
            group.attrs[name] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        group.attrs["dtype"] = str(group["features"].dtype)  # what is stored, whatever a later writer asked for
        group.attrs["updated"] = _now()
        existing = set(group["ids"].asstr()[:])
        new = [i for i in header["ids"] if i not in existing]
        if new:
            n = group["ids"].shape[0]
            for name in ("ids", "features", "done"):
                group[name].resize(n + len(new), axis=0)
            group["ids"][n:] = np.array(new, dtype=object)
            group["done"][n:] = False

    def _rows(self, key: str, header: dict, body: bytes) -> None:
        group = self.f[key]
        ids = header["ids"]
        if ids:
            if key not in self._index:
                self._index[key] = {v: i for i, v in enumerate(group["ids"].asstr()[:])}
                self._done[key] = group["done"][:]
            index = self._index[key]
            feats = np.frombuffer(body, dtype=header["dtype"]).reshape(len(ids), -1)
            rows = np.array([index[i] for i in ids])
            order = np.argsort(rows)
            rows, feats = rows[order], feats[order]
            ds = group["features"]
            if rows[-1] - rows[0] + 1 == len(rows):
                ds[rows[0] : rows[-1] + 1] = feats.astype(ds.dtype)
            else:
                ds[rows] = feats.astype(ds.dtype)
            self._done[key][rows] = True
        upd = self._failures.setdefault(key, {})
        for image_id in ids:
            upd[image_id] = None
        for image_id, error in header.get("failures", []):
            upd[image_id] = error


class StoreWriter:
    """The single writer of a store: lock, log, checkpoint. Use as a context manager."""

    def __init__(self, store: FeatureStore, *, checkpoint_seconds: float = 300.0) -> None:
        self.store = store
        self.checkpoint_seconds = checkpoint_seconds
        self._lock = FileLock(store.lock_path)
        self._fh = None
        self._last_checkpoint = time.monotonic()
        self._last_sync = time.monotonic()
        self._ids: dict[str, set[str]] = {}  # ids each group accepts, read when first written

    def __enter__(self) -> "StoreWriter":
        self.store.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                if self.store.owner_path.exists():
                    raise
                # no owner: a reader is replaying a dead writer's log, which takes moments
                self._lock.acquire(timeout=RECOVERY_WAIT_SECONDS)
        except Timeout:
            raise FeatkitError(
                f"feature store {self.store.path} is being written by another featkit process "
                f"({_read_owner(self.store)}); wait for it to finish, or stop it — only one writer at a time"
            ) from None
        try:
            self.store.owner_path.write_text(f"pid {os.getpid()} since {_now()}")
            self.store._checkpoint()  # replay what a crashed writer left
            self._fh = open(self.store.wal_path, "ab")
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            self.store._checkpoint()
        finally:
            self.store.owner_path.unlink(missing_ok=True)
            self._lock.release()

    # -- records ---------------------------------------------------------------------
    def _append(self, record: bytes) -> None:
        assert self._fh is not None, "use StoreWriter as a context manager"
        self._fh.write(record)
        self._fh.flush()  # in the OS after every batch: survives kill -9
        now = time.monotonic()
        if now - self._last_sync > 5.0:
            os.fsync(self._fh.fileno())  # and on disk every few seconds: survives power loss
            self._last_sync = now
        if now - self._last_checkpoint > self.checkpoint_seconds:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Fold the log into the .h5 now (readers then see the rows)."""
        self._fh.close()
        self.store._checkpoint()
        self._fh = open(self.store.wal_path, "ab")
        self._last_checkpoint = time.monotonic()

    def ensure_group(self, meta: GroupMeta, ids: list[str]) -> None:
        """Create ``backbone/variant`` or check it agrees with ``meta``; add new ids."""
        key = f"{meta.backbone}/{meta.variant}"
        if self.store.path.exists():
            with h5py.File(self.store.path, "r", locking=False) as f:
                if key in f and "features" in f[key]:
                    _check_compatible(self.store.path, key, _group_meta(f[key]), meta)
        attrs = meta.attrs()
        attrs["preprocess"] = meta.preprocess
        self._append(_encode({"type": "group", "key": key, "meta": attrs, "ids": list(ids)}))
        self.checkpoint()
        self._ids.pop(key, None)

    def _accepts(self, key: str, ids) -> None:
        """Refuse, before it reaches the log, a record the checkpoint could not apply."""
        if key not in self._ids:
            with self.store._open_read() as f:
                if key not in f or "features" not in f[key]:
                    self.store._group(f, key)  # raises, naming the groups there are
                self._ids[key] = set(f[key]["ids"].asstr()[:])
        unknown = [i for i in ids if i not in self._ids[key]]
        if unknown:
            raise FeatkitError(f"{len(unknown)} id(s) are not rows of {key} (e.g. {unknown[0]!r}); "
                               "add them with ensure_group first")

    def write_rows(self, key: str, ids: list[str], features: np.ndarray,
                   failures: list[tuple[str, str]] = ()) -> None:
        ids, failures = list(ids), [(str(i), str(e)) for i, e in failures]
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.shape[0] != len(ids):
            raise FeatkitError(f"write_rows got {len(ids)} ids but {features.shape[0]} feature rows")
        self._accepts(key, ids + [i for i, _ in failures])
        header = {"type": "rows", "key": key, "ids": ids, "dtype": "float32", "failures": failures}
        self._append(_encode(header, features.tobytes()))

    def write_aux(self, key: str, name: str, data: np.ndarray, attrs: dict | None = None) -> None:
        """Store ``data`` beside ``key``'s features as ``aux/<name>``, replacing an older one."""
        self._accepts(key, [])
        data = np.ascontiguousarray(data)
        if data.dtype.kind not in "biufc":
            raise FeatkitError(f"aux array {name!r} must be numeric, got dtype {data.dtype}")
        attrs = {k: (json.dumps(v, default=_json_default) if isinstance(v, dict) or v is None else _plain(v))
                 for k, v in (attrs or {}).items()}
        header = {"type": "aux", "key": key, "name": name, "dtype": data.dtype.str, "shape": list(data.shape),
                  "attrs": attrs}
        self._append(_encode(header, data.tobytes()))


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _read_owner(store: FeatureStore) -> str:
    try:
        return store.owner_path.read_text().strip()
    except OSError:
        return "owner unknown"


def _check_compatible(path: Path, key: str, stored: dict, meta: GroupMeta) -> None:
    problems = []
    if str(stored.get("weights_sha256")) != meta.weights_sha256:
        problems.append(f"weights sha256 {str(stored.get('weights_sha256'))[:12]}… ≠ {meta.weights_sha256[:12]}…")
    if stored.get("preprocess_fingerprint") != meta.preprocess_fingerprint:
        problems.append(f"preprocessing {stored.get('preprocess')} ≠ {meta.preprocess}")
    if int(stored.get("dim", meta.dim)) != meta.dim:
        problems.append(f"dimension {stored.get('dim')} ≠ {meta.dim}")
    if problems:
        raise FeatkitError(
            f"store {path} already holds {key} made differently ({'; '.join(problems)}); rows from the two "
            "would not be comparable, so they are never mixed. Use another --variant name, or another --store"
        )
