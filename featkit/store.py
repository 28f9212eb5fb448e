"""The HDF5 feature store: a base file per collection, plus segments holding recent work.

Layout (every file is plain HDF5)::

    features/<name>.h5                 the base: one group per backbone/variant
      <backbone>/<variant>/            e.g. mobilenet_v2/imagenet1k_v1
        ids        (n,)      image ids (relative paths), fixed-width utf-8
        done       (n,)      bool: the row holds a computed embedding
        features   (n, dim)  float32 or float16, chunks of <= 2 MiB (256 rows up to 2048 float32 dims)
        failures/ids, failures/errors   images that could not be embedded, and why
        aux/<name>            derived arrays (e.g. UMAP coordinates) with their parameters
        attrs: backbone, variant, weights, weights_sha256, preprocess (JSON),
               preprocess_fingerprint, dim, dtype, featkit_version, manifest_hash, created, updated
    features/<name>.h5.d/<backbone>/<variant>/<first>-<last>.h5
                                       segments: one group's newer rows, the same datasets at the root
    features/<name>.h5.wal             the running writer's log; .lock and .owner: who writes

Cost follows the work. No file is ever modified in place. A writer appends each batch
to a write-ahead log (length- and CRC-framed records, handed to the OS after every
batch) and a *checkpoint* folds the log into one new segment per group it touched
(written under a temporary name, fsynced, renamed), then deletes the log. A row's
newest file decides it (done with its features, failed with its reason), so a checkpoint
or an aux write costs what it writes, and a run with nothing to do writes nothing.
Segments are merged, amortised: a group's newest segments merge while the one before
them is no larger than them together (so a group has at most ~log2 segments), and every
segment folds into a new base once they reach ``MERGE_RATIO`` of the base's size (so
each row is rewritten a bounded number of times). A small store therefore stays one
self-contained .h5; a large one keeps its recent work in segments until they are worth
folding in. ``FeatureStore.compact()`` folds them in now (e.g. before copying the .h5).

kill -9 at any moment leaves the base and every renamed segment whole, plus a log whose
torn tail is ignored; the next writer (or a reader) replays the log. Replaying twice
only writes the same rows again, and the newest copy wins. Files superseded by a merge
are deleted once the merge is renamed in; readers that find one gone start again.

Checksums. Every dataset is chunked with HDF5's fletcher32 filter (plain h5py checks it
too) and every file uses the checksummed v1.10 metadata format, so damaged bytes read as
an error naming the file, the group and the image ids, never as wrong numbers. (Fletcher32
sums 16-bit words modulo 65535: it sees any single flipped bit, but not a zero word turned
into 0xFFFF.) ``verify()`` reads every byte; ``verify(repair=True)`` keeps damaged files
aside (in ``<name>.h5.damaged/``), rewrites what they held from its readable rows, and
leaves the rest not done for extract to recompute. Stores written before segments existed
(one .h5, variable-length ids, no checksums) open as a base; ``verify(repair=True)`` or the
next fold into the base rewrites them with checksums.

Disks. Every write goes through the log (plain writes: a full disk is a clean error, and a
torn record is trimmed so that the ones before stay) or through a new file checked against
the free space first, because HDF5 meeting a full disk can crash the process (h5py#914);
a failed write removes its temporary file and keeps the log. A read-only folder reads.

One writer at a time: an exclusive lock on ``<name>.h5.lock`` (released by the OS when a
writer dies), refused with a clear message when held. Readers never block.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote, unquote

import h5py
import numpy as np
from filelock import FileLock, Timeout

from featkit._version import __version__
from featkit.errors import FeatkitError

_MAGIC, _MAGIC_V1 = b"FKW2", b"FKW1"  # log records; FKW1 (ids in the JSON header) was written before segments
_HEAD = struct.Struct("<4sQI")  # magic, payload length, crc32(payload)
CHUNK_ROWS = 256  # rows per chunk of ids and flags, and at most of features: the unit a checksum covers
_CHUNK_BYTES = 2**21  # features chunks of <= 2 MiB: 256 rows of 1280 float32 dims, 64 of 8192
MERGE_RATIO = 0.5  # fold segments into the base once they reach half its size: each base byte is rewritten
#                    at most 1 + 1/MERGE_RATIO = 3 times over the store's life (the base grows x1.5 per fold)
RECOVERY_WAIT_SECONDS = 60.0  # a writer waits this long for a reader replaying a dead writer's log
_LIBVER = ("v110", "v110")  # checksummed superblock, object headers and chunk indexes; readable by HDF5 >= 1.10
_IO_BYTES = 4 * 2**20  # rows a merge assembles per step: memory stays flat (tests/test_memory.py)
_SPACE_MARGIN = 2**20  # a file's own HDF5 metadata, well above what it writes (test_space_estimate_bounds)
_SEGMENT = re.compile(r"(\d{6,})-(\d{6,})\.h5")
_READ_TRIES = 5


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
    """Features of done rows: ``X[i]`` is the embedding of ``ids[i]`` (a numpy unicode array)."""

    key: str
    ids: np.ndarray
    X: np.ndarray
    meta: dict


# -- ids: fixed-width utf-8 bytes on disk and inside, numpy unicode at the surface ------------
def _as_bytes(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype.kind == "S":
        return arr
    if arr.size == 0:
        return np.zeros(0, "S1")
    if arr.dtype.kind != "U":
        arr = arr.astype(str)
    try:
        return arr.astype("S")  # ASCII ids, the usual case, encode in C (0.2 s per million)
    except UnicodeEncodeError:
        return np.char.encode(arr, "utf-8")


def _as_str(raw: np.ndarray) -> np.ndarray:
    if raw.size == 0:
        return np.zeros(0, "U1")
    if (np.ascontiguousarray(raw).view(np.uint8) < 128).all():
        return raw.astype("U")
    return np.char.decode(raw, "utf-8")


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _public_meta(attrs: dict) -> dict:
    meta = {k: v for k, v in attrs.items() if not k.startswith("_")}
    if isinstance(meta.get("preprocess"), str):
        meta["preprocess"] = json.loads(meta["preprocess"])
    return meta


# -- the disk: atomic files, free space, one-line errors ------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _disk_error(err: OSError, folder: Path, doing: str, then: str) -> FeatkitError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return FeatkitError(f"no space left on the disk of {folder} while {doing}; free some space, then {then}")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return FeatkitError(
            f"store folder {folder} is read-only: {err.strerror or _first_line(err)} (while {doing}). Reading works; "
            "to write, point --store (or [store] path in featkit.toml) to a writable folder"
        )
    return FeatkitError(f"cannot write the feature store in {folder} while {doing}: {_first_line(err)}; {then}")


class _NoSpace(FeatkitError):
    """Not enough free disk for a file about to be written."""


def _check_space(folder: Path, need: int, doing: str, then: str) -> None:
    """Refuse before HDF5 writes: HDF5 hitting a full disk can crash the process on close (h5py#914)."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise _NoSpace(f"no space left on the disk of {folder}: {doing} needs about {_mb(need)} and {_mb(free)} "
                       f"is free; free some space, then {then}")


def _table_bytes(ids: np.ndarray, done_rows: np.ndarray, dim: int, dtype, extra: int) -> int:
    """An upper bound of a table's file: ids and flags, every chunk holding a done row, ``extra``, metadata
    (64 bytes per chunk of the three row datasets: their index entries and checksums)."""
    chunks = len(np.unique(done_rows // CHUNK_ROWS))
    index = 3 * (len(ids) // CHUNK_ROWS + 1) * 64
    return (len(ids) * (ids.dtype.itemsize + 1) + chunks * CHUNK_ROWS * dim * np.dtype(dtype).itemsize + extra
            + index + _SPACE_MARGIN)


@contextmanager
def _new_file(final: Path, doing: str, then: str) -> Iterator[Path]:
    """A temporary path beside ``final`` that becomes it, fsynced and renamed, when the block succeeds."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, final)
    except OSError as err:
        raise _disk_error(err, final.parent, doing, then) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(final.parent)


def _h5_new(path: Path) -> h5py.File:
    # a chunk cache of a few chunks absorbs the partial-chunk writes of small logged batches
    return h5py.File(path, "w", libver=_LIBVER, locking=False, rdcc_nbytes=4 * _CHUNK_BYTES, rdcc_nslots=10007)


def _h5_read(path: Path) -> h5py.File:
    return h5py.File(path, "r", locking=False)


# -- the write-ahead log ---------------------------------------------------------------------
def _encode(header: dict, *bodies: bytes) -> bytes:
    head = json.dumps(header, default=_json_default).encode()
    payload = b"".join([struct.pack("<I", len(head)), head, *bodies])
    return _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _group_record(key: str, attrs: dict, ids: np.ndarray) -> bytes:
    return _encode({"type": "group", "key": key, "meta": attrs, "n": len(ids), "width": ids.dtype.itemsize},
                   ids.tobytes())


def _rows_record(key: str, ids: np.ndarray, features: np.ndarray, failures: list[tuple[str, str]]) -> bytes:
    header = {"type": "rows", "key": key, "n": len(ids), "width": ids.dtype.itemsize, "dim": features.shape[1],
              "failures": failures}
    return _encode(header, ids.tobytes(), features.tobytes())


@dataclass
class _Record:
    header: dict
    ids: np.ndarray | None  # the record's ids (fixed-width bytes)
    offset: int  # where its features or aux data start in the log file
    end: int  # the offset after the record


def _iter_wal(path: Path) -> Iterator[_Record]:
    """Valid records; stops at the first torn or corrupt one."""
    if not path.exists():
        return
    with open(path, "rb") as fh:
        offset = 0
        while True:
            raw = fh.read(_HEAD.size)
            if len(raw) < _HEAD.size:
                return
            magic, length, crc = _HEAD.unpack(raw)
            if magic not in (_MAGIC, _MAGIC_V1):
                return
            payload = fh.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            (hlen,) = struct.unpack_from("<I", payload)
            header = json.loads(payload[4 : 4 + hlen])
            body = offset + _HEAD.size + 4 + hlen
            ids = None
            if magic == _MAGIC_V1 and "ids" in header:
                ids = _as_bytes(header.pop("ids"))
                if header["type"] == "group":  # its preprocess was a dict then
                    header["meta"] = {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
                                      for k, v in header["meta"].items()}
                if header["type"] == "rows":
                    header["dim"] = (length - 4 - hlen) // (4 * len(ids)) if len(ids) else 0
            elif "n" in header:
                ids = np.frombuffer(payload, f"S{max(header['width'], 1)}", header["n"], 4 + hlen).copy()
                body += header["n"] * header["width"]
            offset += _HEAD.size + length
            yield _Record(header, ids, body, offset)


class _Log:
    """Appends records with plain writes, so a full disk is a clean error, and trims a torn one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.size = 0

    def append(self, record: bytes) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self.size = os.fstat(self.fd).st_size
        view = memoryview(record)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            os.ftruncate(self.fd, self.size)  # no torn record: later records must stay readable
            raise
        self.size += len(record)

    def sync(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        if self.size == 0:
            self.path.unlink(missing_ok=True)


# -- one group's rows in one file ------------------------------------------------------------
class _Damaged(FeatkitError):
    """Bytes of a store file that cannot be read (checksum mismatch, truncation, I/O error)."""

    def __init__(self, file: Path, key: str, what: str, err: BaseException, ids=None) -> None:
        self.file, self.key, self.what, self.error = file, key, what, _first_line(err)
        self.ids = [] if ids is None else [str(i) for i in ids]
        named = ""
        if self.ids:
            named = (f"; {len(self.ids)} image(s) affected: {', '.join(repr(i) for i in self.ids[:5])}"
                     f"{', …' if len(self.ids) > 5 else ''}")
        where = f"{what} of {key}" if key else what
        super().__init__(f"feature store file {file} is damaged: {where} cannot be read ({self.error}){named}. "
                         "Run `featkit verify` to set the damaged rows aside; `featkit extract` then recomputes them")


class _Stale(Exception):
    """A file a read needed was replaced by a writer meanwhile: read again."""


class _Table:
    """One group's rows in one file: a group of the base, or a segment's root."""

    def __init__(self, group: h5py.Group, file: Path, key: str, seq: tuple[int, int] | None = None) -> None:
        self.group, self.file, self.key, self.seq = group, file, key, seq
        self._ids: np.ndarray | None = None

    def damaged(self, what: str, err: BaseException, ids=None) -> _Damaged:
        return _Damaged(self.file, self.key, what, err, ids)

    def _dataset(self, name: str) -> h5py.Dataset:
        try:
            return self.group[name]
        except (OSError, KeyError) as err:
            raise self.damaged(name, err) from None

    def _has(self, name: str) -> bool:
        try:
            return name in self.group
        except OSError as err:
            raise self.damaged(name, err) from None

    def _whole(self, name: str) -> np.ndarray:
        """A whole dataset (ids as fixed-width bytes, also from v1 stores' variable-length strings)."""
        ds = self._dataset(name)
        try:
            return _as_bytes(ds.asstr()[()]) if ds.dtype.kind == "O" else ds[()]
        except OSError as err:
            raise self.damaged(name, err) from None

    def _salvaged(self, name: str, lost: list) -> tuple[np.ndarray, np.ndarray]:
        """The readable chunks of a 1-d dataset (zeros elsewhere) and a mask of what could be read."""
        ds = self._dataset(name)
        parts, ok = [np.zeros(0, ds.dtype if ds.dtype.kind != "O" else "S1")], np.ones(len(ds), bool)
        for rows, data in _chunks(ds):
            if isinstance(data, OSError):
                ok[rows] = False
                lost.append(self.damaged(f"{name} rows {rows.start}-{rows.stop - 1}", data))
                data = np.zeros(rows.stop - rows.start, parts[0].dtype)
            parts.append(data)
        return np.concatenate(parts), ok

    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = self._whole("ids")
        return self._ids

    @property
    def features(self) -> h5py.Dataset:
        return self._dataset("features")

    @property
    def checksummed(self) -> bool:
        return all(obj.fletcher32 or obj.size == 0 or obj.ndim == 0 for obj in self._datasets())

    def _datasets(self) -> list[h5py.Dataset]:
        found = []
        try:
            self.group.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
        except OSError as err:
            raise self.damaged("the group", err) from None
        return found

    def attrs(self) -> dict:
        try:
            return {k: _plain(v) for k, v in self.group.attrs.items()}
        except OSError as err:
            raise self.damaged("the attributes", err) from None

    def failures(self, lost: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        if not self._has("failures"):
            return np.zeros(0, "S1"), np.zeros(0, "S1")
        try:
            return self._whole("failures/ids"), self._whole("failures/errors")
        except _Damaged as err:
            if lost is None:
                raise
            lost.append(err)
            return np.zeros(0, "S1"), np.zeros(0, "S1")

    def states(self, lost: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
        """Its ids, their state here (0 listed, 1 failed, 2 done), their rows, and the failures' reasons.

        With ``lost`` (salvage), unreadable chunks are left out and reported there instead of raising.
        """
        if lost is None:
            ids, ok = self.ids(), None
            done = self._whole("done").astype(bool)
        else:
            ids, ok = self._salvaged("ids", lost)
            done, done_ok = self._salvaged("done", lost)
            done = done.astype(bool) & done_ok
            self._ids = ids
        code = np.where(done, 2, 0).astype(np.int8)
        errors: dict[int, str] = {}
        fail_ids, fail_errors = self.failures(lost)
        if len(fail_ids) and len(ids):
            sorter = np.argsort(ids)
            at = sorter[np.searchsorted(ids, fail_ids, sorter=sorter).clip(max=len(ids) - 1)]
            for row, found, reason in zip(at, ids[at] == fail_ids, fail_errors):
                if found and code[row] == 0:
                    code[row] = 1
                    errors[int(row)] = _plain(reason)
        rows = np.arange(len(ids))
        if ok is not None:
            rows = rows[ok]
        return ids[rows], code[rows], rows, errors

    def aux_names(self) -> list[str]:
        return sorted(self._dataset("aux")) if self._has("aux") else []

    def aux(self, name: str) -> tuple[np.ndarray, dict]:
        try:
            ds = self.group["aux"][name]
            return ds[()], dict(ds.attrs)
        except OSError as err:
            raise self.damaged(f"aux array {name!r}", err) from None

    def gather(self, positions: np.ndarray, out: np.ndarray, at: np.ndarray, *, run_rows: int = 8192,
               lost: list | None = None) -> np.ndarray:
        """``out[at] = features[positions]`` (positions ascending), reading whole runs of chunks.

        Returns the mask of positions that could not be read (salvage, with ``lost``); raises otherwise.
        """
        ds = self.features
        bad = np.zeros(len(positions), bool)
        if not len(positions):
            return bad
        step = ds.chunks[0] if ds.chunks else len(ds)
        chunk = positions // step
        ends = np.r_[np.flatnonzero(np.diff(chunk) > 1) + 1, len(positions)]  # runs never read unneeded chunks
        span = max(1, run_rows // step)
        i = 0
        while i < len(positions):
            j = min(int(ends[np.searchsorted(ends, i, "right")]), int(np.searchsorted(chunk, chunk[i] + span)))
            lo, hi = int(chunk[i]) * step, min((int(chunk[j - 1]) + 1) * step, len(ds))
            p, a = positions[i:j], at[i:j]
            try:
                if p[-1] - p[0] == j - i - 1 and a[-1] - a[0] == j - i - 1:  # the usual case: no temporary copy
                    ds.read_direct(out, np.s_[p[0] : p[-1] + 1], np.s_[a[0] : a[-1] + 1])
                else:
                    out[a] = ds[lo:hi][p - lo]
            except OSError:
                for c in range(lo, hi, step):  # which chunks, exactly
                    sel = np.flatnonzero((positions[i:j] >= c) & (positions[i:j] < c + step)) + i
                    try:
                        block = ds[c : min(c + step, hi)]
                    except OSError as err:
                        damage = self.damaged(f"features rows {c}-{min(c + step, hi) - 1}", err,
                                              self._known_ids(positions[sel]))
                        if lost is None:
                            raise damage from None
                        lost.append(damage)
                        bad[sel] = True
                        continue
                    out[at[sel]] = block[positions[sel] - c]
            i = j
        return bad

    def _known_ids(self, positions: np.ndarray) -> np.ndarray:
        try:
            return _as_str(self.ids()[positions])
        except _Damaged:
            return np.zeros(0, "U1")


def _chunks(ds: h5py.Dataset) -> Iterator[tuple[slice, np.ndarray | OSError]]:
    """Each chunk of ``ds`` read on its own: its rows, and its data or the error reading it."""
    for sel in (ds.iter_chunks() if ds.chunks and ds.size else [(slice(0, len(ds) if ds.shape else 1),)]):
        try:
            yield sel[0], (_as_bytes(ds.asstr()[sel]) if ds.dtype.kind == "O" else ds[sel if ds.shape else ()])
        except OSError as err:
            yield sel[0], err


# -- which row lives where -------------------------------------------------------------------
@dataclass
class _Index:
    """Every row of a group in store order, and the table that decides each (its newest opinion)."""

    ids: np.ndarray  # fixed-width bytes
    code: np.ndarray  # int8: 0 pending, 1 failed, 2 done
    src: np.ndarray  # the deciding table (-1: none)
    pos: np.ndarray  # the row there
    errors: dict[int, str]  # row -> why it failed
    _sorted: np.ndarray | None = None

    @property
    def sorted_ids(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = np.sort(self.ids)
        return self._sorted

    def failures(self) -> dict[str, str]:
        return {str(_as_str(self.ids[[row]])[0]): reason for row, reason in self.errors.items()}


def _contains(known: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``ids`` in the sorted array ``known``, without a Python object per id."""
    if not len(known) or not len(ids):
        return np.zeros(len(ids), bool)
    return known[np.searchsorted(known, ids).clip(max=len(known) - 1)] == ids


def _index(tables: list[_Table], lost: list | None = None) -> _Index:
    """Rows in order of first mention; each decided by the newest table that has an opinion on it."""
    parts = [t.states(lost) for t in tables]
    if len(parts) == 1:
        ids, code, rows, errors = parts[0]
        src = np.where(code > 0, 0, -1)
        return _Index(ids, code, src, rows, {int(i): errors[int(rows[i])] for i in np.flatnonzero(code == 1)})
    sizes = [len(p[0]) for p in parts]
    if not sum(sizes):
        return _Index(np.zeros(0, "S1"), np.zeros(0, np.int8), np.zeros(0, int), np.zeros(0, int), {})
    everything = np.concatenate([p[0] for p in parts])
    code = np.concatenate([p[1] for p in parts])
    rows = np.concatenate([p[2] for p in parts])
    table = np.repeat(np.arange(len(parts)), sizes)
    order = np.argsort(everything, kind="stable")  # one sort: 0.5 s per million ids
    ranked = everything[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    first = order[starts]
    newest = np.maximum.reduceat(np.where(code[order] > 0, order, -1), starts)
    rank = np.argsort(first, kind="stable")
    newest = newest[rank]
    has = newest >= 0
    src = np.where(has, table[newest], -1)
    pos = np.where(has, rows[newest], -1)
    row_code = np.where(has, code[newest], 0).astype(np.int8)
    errors = {int(i): parts[src[i]][3][int(pos[i])] for i in np.flatnonzero(row_code == 1)}
    return _Index(ranked[starts][rank], row_code, src, pos, errors, _sorted=ranked[starts])


# -- writing tables --------------------------------------------------------------------------
def _put(group: h5py.Group, name: str, data: np.ndarray, rows: int = CHUNK_ROWS) -> h5py.Dataset:
    """A dataset with fletcher32 checksums on chunks of ``rows`` rows (plain when empty: no bytes to cover)."""
    data = np.asarray(data)
    if data.size == 0 or data.ndim == 0:
        return group.create_dataset(name, data=data)
    return group.create_dataset(name, data=data, chunks=(min(rows, len(data)), *data.shape[1:]), fletcher32=True)


def _feature_rows(dim: int, dtype) -> int:
    """Rows per features chunk: a power of two (so it divides CHUNK_ROWS) of at most _CHUNK_BYTES."""
    fit = _CHUNK_BYTES // (dim * np.dtype(dtype).itemsize)
    return int(min(CHUNK_ROWS, 2 ** max(0, fit.bit_length() - 1)))


def _features(group: h5py.Group, n: int, dim: int, dtype) -> h5py.Dataset:
    if n == 0:
        return group.create_dataset("features", shape=(0, dim), dtype=dtype)
    return group.create_dataset("features", shape=(n, dim), dtype=dtype,
                                chunks=(min(_feature_rows(dim, dtype), n), dim), fletcher32=True)


def _write_runs(ds: h5py.Dataset, positions: np.ndarray, rows: np.ndarray) -> None:
    """``ds[positions] = rows`` as slice writes of consecutive positions."""
    order = np.argsort(positions, kind="stable")
    positions, rows = positions[order], rows[order]
    cuts = np.flatnonzero(np.diff(positions) != 1) + 1
    for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(positions)]):
        ds[positions[start] : positions[stop - 1] + 1] = rows[start:stop]


def _write_tail(group: h5py.Group, done: np.ndarray, failed_ids: np.ndarray, failed_errors: list[str],
                aux: dict, attrs: dict) -> None:
    _put(group, "done", done)
    fail = group.create_group("failures")
    _put(fail, "ids", failed_ids)
    _put(fail, "errors", _as_bytes(failed_errors))
    if aux:
        folder = group.create_group("aux")
        for name, (data, aux_attrs) in aux.items():
            ds = _put(folder, name, data, rows=max(1, 2**20 // max(1, data[:1].nbytes)))  # ~1 MiB chunks
            for k, v in aux_attrs.items():
                ds.attrs[k] = v
    for k, v in attrs.items():
        group.attrs[k] = v


def _merge_into(out: h5py.Group, tables: list[_Table], attrs: dict, *, then: str,
                lost: list | None = None) -> None:
    """Write what ``tables`` hold, the newest opinion on each row winning, as one table in ``out``.

    With ``lost`` (salvage), unreadable rows are left not done and reported there.
    """
    index = _index(tables, lost)
    n, dim = len(index.ids), int(attrs["dim"])
    dtype = tables[-1].features.dtype
    aux: dict[str, tuple[np.ndarray, dict]] = {}
    for table in reversed(tables):
        for name in table.aux_names():
            if name not in aux:
                try:
                    aux[name] = table.aux(name)
                except _Damaged as err:
                    if lost is None:
                        raise
                    lost.append(err)
    extra = sum(a.nbytes for a, _ in aux.values()) + sum(len(e) for e in index.errors.values())
    _check_space(Path(out.file.filename).parent, _table_bytes(index.ids, np.flatnonzero(index.code == 2), dim, dtype,
                 extra), f"merging {tables[-1].key}", then)
    _put(out, "ids", index.ids)
    ds = _features(out, n, dim, dtype)
    done = index.code == 2
    rows = np.flatnonzero(done)
    step = _feature_rows(dim, dtype)
    block = max(step, _IO_BYTES // (dim * dtype.itemsize) // step * step)
    for b in range(0, n, block):
        e = min(b + block, n)
        sel = rows[np.searchsorted(rows, b) : np.searchsorted(rows, e)]
        if not len(sel):
            continue
        buf = np.zeros((e - b, dim), dtype)
        for s in np.unique(index.src[sel]):
            part = sel[index.src[sel] == s]
            part = part[np.argsort(index.pos[part], kind="stable")]
            bad = tables[s].gather(index.pos[part], buf, part - b, run_rows=block, lost=lost)
            done[part[bad]] = False
        chunks = np.zeros((e - b + step - 1) // step, bool)
        chunks[(sel - b) // step] = True  # write only chunks holding rows: pending ones take no disk
        cuts = np.flatnonzero(np.diff(np.r_[0, chunks.astype(np.int8), 0]))
        for start, stop in zip(cuts[::2], cuts[1::2]):
            lo, hi = b + start * step, min(b + stop * step, e)
            ds[lo:hi] = buf[lo - b : hi - b]
    failed = sorted(index.errors)
    _write_tail(out, done, index.ids[failed], [index.errors[r] for r in failed], aux, attrs)


@dataclass
class _Reduced:
    """One group's log records as a table: every id they name, in order, and the newest word on each."""

    ids: np.ndarray
    done: np.ndarray
    failed: np.ndarray  # ids whose newest record is a failure
    reasons: list[str]
    kept: list[tuple[int, np.ndarray, np.ndarray]]  # (record, its rows that are newest, their positions in ids)


def _reduce(recs: list[_Record]) -> _Reduced:
    mentioned, said = [], []  # ids in order; (ids, state, record, row) of every word on an id
    for k, rec in enumerate(recs):
        if rec.header["type"] in ("group", "rows"):
            mentioned.append(rec.ids)
        if rec.header["type"] == "rows":
            said.append((rec.ids, 2, k))
            if rec.header["failures"]:
                failed = _as_bytes([i for i, _ in rec.header["failures"]])
                mentioned.append(failed)
                said.append((failed, 1, k))
    ids = np.concatenate(mentioned) if mentioned else np.zeros(0, "S1")
    _, first = np.unique(ids, return_index=True)
    ids = ids[np.sort(first)]
    if not said:
        return _Reduced(ids, np.zeros(len(ids), bool), np.zeros(0, "S1"), [], [])
    who = np.concatenate([w[0] for w in said])
    state = np.concatenate([np.full(len(w[0]), w[1]) for w in said])
    record = np.concatenate([np.full(len(w[0]), w[2]) for w in said])
    row = np.concatenate([np.arange(len(w[0])) for w in said])
    _, last = np.unique(who[::-1], return_index=True)
    last = len(who) - 1 - last  # the newest word on each id
    sorter = np.argsort(ids)
    where = sorter[np.searchsorted(ids, who[last], sorter=sorter)]
    done = np.zeros(len(ids), bool)
    done[where[state[last] == 2]] = True
    failed = last[state[last] == 1]
    reasons = [recs[record[e]].header["failures"][row[e]][1] for e in failed]
    kept = []
    for k in np.unique(record[last[state[last] == 2]]):
        mine = np.flatnonzero((record[last] == k) & (state[last] == 2))
        kept.append((int(k), row[last[mine]], where[mine]))
    return _Reduced(ids, done, who[failed], reasons, kept)


# -- the store ------------------------------------------------------------------------------
def _quote(part: str) -> str:
    q = quote(part, safe="+,=@")
    return "%2E" + q[1:] if q.startswith(".") else q  # never "." or "..": a key is never a path


def _parse_segment(path: Path) -> tuple[int, int] | None:
    m = _SEGMENT.fullmatch(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _live(found: list[tuple[int, int, Path]], merged: int) -> list[tuple[int, int, Path]]:
    """Segments not yet in the base and not superseded by a merged one, oldest first."""
    found = [s for s in found if s[1] > merged]
    return sorted((s for s in found if not any(o is not s and o[0] <= s[0] and s[1] <= o[1] for o in found)),
                  key=lambda s: s[1])


class _Snapshot:
    """The base and the segments of a store at one moment, open for reading."""

    def __init__(self, store: FeatureStore, *, tolerant: bool = False) -> None:
        self.store = store
        self.tolerant = tolerant  # files that cannot be opened go to ``broken`` instead of raising (verify)
        self.broken: list[_Damaged] = []
        self.base: h5py.File | None = None
        self.base_keys: dict[str, int] = {}  # key -> last segment folded into the base
        self.folders: dict[str, Path] = {}
        self._tables: dict[str, list[_Table]] = {}
        self._files: list[h5py.File] = []
        self._inode = None

    def __enter__(self) -> _Snapshot:
        path = self.store.path
        self._inode = _inode(path)
        if self._inode is not None:
            try:
                self.base = _h5_read(path)
                self._files.append(self.base)
                found = []
                self.base.visititems(lambda name, obj: found.append(name)
                                     if isinstance(obj, h5py.Group) and "features" in obj else None)
                self.base_keys = {k: int(self.base[k].attrs.get("_seq", 0)) for k in found}
            except FileNotFoundError:
                raise _Stale from None
            except OSError as err:
                self.__exit__()
                self.base, self.base_keys, self._files = None, {}, []
                self._broke(_Damaged(path, "", "the file", err))
        root = self.store.segments_dir
        if root.is_dir():
            for b in sorted(p for p in root.iterdir() if p.is_dir()):
                for v in sorted(p for p in b.iterdir() if p.is_dir()):
                    self.folders[f"{unquote(b.name)}/{unquote(v.name)}"] = v
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files:
            f.close()

    def _broke(self, damage: _Damaged) -> None:
        if not self.tolerant:
            raise damage
        self.broken.append(damage)

    def segments(self, key: str) -> list[tuple[int, int, Path]]:
        folder = self.folders.get(key)
        if folder is None:
            return []
        found = [(*seq, p) for p in folder.iterdir() if (seq := _parse_segment(p))]
        return _live(found, self.base_keys.get(key, 0))

    def keys(self) -> list[str]:
        return sorted(set(self.base_keys) | {k for k in self.folders if self.segments(k)})

    def tables(self, key: str) -> list[_Table]:
        if key not in self._tables:
            tables = []
            if key in self.base_keys:
                try:
                    tables.append(_Table(self.base[key], self.store.path, key))
                except OSError as err:
                    self._broke(_Damaged(self.store.path, key, "the group", err))
            for first, last, path in self.segments(key):
                try:
                    f = _h5_read(path)
                except FileNotFoundError:
                    raise _Stale from None  # merged away since we listed it
                except OSError as err:
                    self._broke(_Damaged(path, key, "the file", err))
                    continue
                self._files.append(f)
                tables.append(_Table(f, path, key, (first, last)))
            if _inode(self.store.path) != self._inode:
                raise _Stale  # the base was replaced meanwhile
            self._tables[key] = tables
        return self._tables[key]

    def group(self, key: str) -> list[_Table]:
        """The tables of ``key``, or a message naming the groups there are."""
        tables = self.tables(key) if key in self.keys() else []
        if not tables:
            have = self.keys()
            raise FeatkitError(
                f"store {self.store.path} has no features for {key!r}; it holds: {', '.join(have) or '(nothing yet)'}"
                f" (run `featkit extract --backbone {key.split('/')[0]}`)"
            )
        return tables

    def attrs(self, key: str) -> dict:
        return self.group(key)[-1].attrs()

    def next_seq(self, key: str) -> int:
        folder = self.folders.get(key)
        taken = [seq[1] for p in folder.iterdir() if (seq := _parse_segment(p))] if folder else []
        return max([self.base_keys.get(key, 0), *taken]) + 1


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


class FeatureStore:
    """An HDF5 feature cache; see the module docstring for layout, costs and crash safety."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.wal_path = self.path.with_name(self.path.name + ".wal")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.owner_path = self.path.with_name(self.path.name + ".owner")
        self.segments_dir = self.path.with_name(self.path.name + ".d")
        self.damaged_dir = self.path.with_name(self.path.name + ".damaged")

    # -- reading ---------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.exists() or self.wal_path.exists() or any(self.segments_dir.glob("*/*/*.h5"))

    def files(self) -> list[Path]:
        """Every file holding the store's data: the base, the segments and the log."""
        found = [p for p in (self.path, self.wal_path) if p.exists()]
        return found + sorted(p for p in self.segments_dir.glob("*/*/*") if _parse_segment(p))

    def _read(self, fn: Callable[[_Snapshot], object], *, recover: bool = True, tolerant: bool = False):
        """``fn`` on a consistent snapshot; again if a writer replaced a file under it."""
        if recover:
            self.recover()
        for _ in range(_READ_TRIES):
            try:
                with _Snapshot(self, tolerant=tolerant) as snap:
                    return fn(snap)
            except _Stale:
                continue
        raise FeatkitError(f"feature store {self.path} kept changing while being read; try again")

    def recover(self) -> bool:
        """Replay a log left by a writer that died; a no-op while a writer is alive."""
        if not self.wal_path.exists():
            return False
        lock = FileLock(self.lock_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False  # a live writer owns the log
        except OSError:
            return False  # a read-only folder: its last checkpoint is still whole
        try:
            self.owner_path.unlink(missing_ok=True)  # we hold the lock: whoever wrote it is gone
            self._collect_garbage()
            self._checkpoint(merge=False)
        except (OSError, FeatkitError):
            return False  # cannot write here: readers see the last checkpoint
        finally:
            lock.release()
        return True

    def keys(self) -> list[str]:
        """Groups holding features, as ``backbone/variant``."""
        if not self.exists():
            return []
        return self._read(lambda snap: snap.keys())

    def meta(self, key: str) -> dict:
        if not self.exists():
            raise self._missing()
        return self._read(lambda snap: _public_meta(snap.attrs(key)))

    def _missing(self) -> FeatkitError:
        return FeatkitError(f"no feature store at {self.path}; run `featkit extract` first")

    def load(self, key: str, ids=None, *, dtype=None, chunk_rows: int = 8192) -> FeatureSet:
        """Done rows of ``key`` (optionally only ``ids``, in store order), read in chunks.

        ``X`` keeps the stored dtype (float16 stores load at half the memory) unless
        ``dtype`` asks for another; :meth:`memory_needed` says how many bytes that is.
        ``ids`` is a numpy unicode array.
        """
        if not self.exists():
            raise self._missing()

        def read(snap: _Snapshot) -> FeatureSet:
            tables = snap.group(key)
            index = _index(tables)
            rows = _selected(index, ids)
            feats = tables[-1].features
            X = np.empty((len(rows), feats.shape[1]), dtype=dtype or feats.dtype)
            for s in np.unique(index.src[rows]):
                at = np.flatnonzero(index.src[rows] == s)
                at = at[np.argsort(index.pos[rows[at]], kind="stable")]
                tables[s].gather(index.pos[rows[at]], X, at, run_rows=chunk_rows)
            return FeatureSet(key=key, ids=_as_str(index.ids[rows]), X=X, meta=_public_meta(tables[-1].attrs()))

        return self._read(read)

    def memory_needed(self, key: str, ids=None, *, dtype=None) -> int:
        """Bytes of the ``X`` that :meth:`load` would return (stored dtype unless ``dtype``)."""
        if not self.exists():
            raise self._missing()

        def count(snap: _Snapshot) -> int:
            tables = snap.group(key)
            feats = tables[-1].features
            return len(_selected(_index(tables), ids)) * feats.shape[1] * np.dtype(dtype or feats.dtype).itemsize

        return self._read(count)

    def status(self, key: str) -> dict:
        """Ids (numpy unicode), done flags and failures of one group (no features read)."""
        if not self.exists():
            raise self._missing()

        def read(snap: _Snapshot) -> dict:
            index = _index(snap.group(key))
            return {"ids": _as_str(index.ids), "done": index.code == 2, "failures": index.failures()}

        return self._read(read)

    def read_aux(self, key: str, name: str) -> tuple[np.ndarray, dict] | None:
        """A derived array stored beside ``key``'s features, with its attributes."""
        if not self.exists():
            return None

        def read(snap: _Snapshot):
            tables = snap.tables(key) if key in snap.keys() else []
            for table in reversed(tables):
                if name in table.aux_names():
                    return table.aux(name)
            return None

        return self._read(read)

    def info(self) -> dict:
        """A summary of every group, for ``featkit info``."""
        if not self.exists():
            raise self._missing()
        files = self.files()

        def read(snap: _Snapshot) -> dict:
            out = {"path": str(self.path), "size_bytes": sum(p.stat().st_size for p in files), "files": len(files),
                   "groups": [], "attrs": {k: _plain(v) for k, v in snap.base.attrs.items()} if snap.base else {}}
            for key in snap.keys():
                tables = snap.tables(key)
                index = _index(tables)
                done, failed = int((index.code == 2).sum()), int((index.code == 1).sum())
                feats = tables[-1].features
                out["groups"].append(
                    {"key": key, "rows": len(index.ids), "done": done, "failed": failed,
                     "pending": len(index.ids) - done - failed, "dim": int(feats.shape[1]), "dtype": str(feats.dtype),
                     "aux": sorted({n for t in tables for n in t.aux_names()}),
                     "segments": sum(t.seq is not None for t in tables),
                     "checksummed": all(t.checksummed for t in tables), **_public_meta(tables[-1].attrs())}
                )
            return out

        return self._read(read)

    # -- writing (the caller holds the lock) --------------------------------------------
    def writer(self) -> StoreWriter:
        return StoreWriter(self)

    def compact(self) -> None:
        """Fold every segment into the base now, so the store is one .h5 file (e.g. to copy it)."""
        with self._locked():
            self._collect_garbage()
            self._checkpoint(merge=False)
            with _Snapshot(self) as snap:
                if any(snap.segments(k) for k in snap.folders):
                    self._rewrite_base(snap)
            self._collect_garbage()

    def _acquire(self, lock: FileLock) -> None:
        """Take the writer's lock (or say who holds it) and record this process as its owner."""
        folder = self.path.parent
        then = "point --store (or [store] path in featkit.toml) elsewhere"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if self.owner_path.exists():
                    raise
                # no owner: a reader is replaying a dead writer's log, which takes moments
                lock.acquire(timeout=RECOVERY_WAIT_SECONDS)
        except Timeout:
            raise FeatkitError(
                f"feature store {self.path} is being written by another featkit process "
                f"({_read_owner(self)}); wait for it to finish, or stop it — only one writer at a time"
            ) from None
        except OSError as err:
            raise _disk_error(err, folder, "taking the writer's lock", then) from None
        try:
            self.owner_path.write_text(f"pid {os.getpid()} since {_now()}")
        except OSError as err:
            lock.release()
            raise _disk_error(err, folder, "recording the writer", then) from None

    def _release(self, lock: FileLock) -> None:
        self.owner_path.unlink(missing_ok=True)
        lock.release()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = FileLock(self.lock_path)
        self._acquire(lock)
        try:
            yield
        finally:
            self._release(lock)

    def _group_folder(self, key: str) -> Path:
        backbone, _, variant = key.partition("/")
        return self.segments_dir / _quote(backbone) / _quote(variant)

    def _checkpoint(self, *, merge: bool = True) -> int:
        """Fold the log into one new segment per group it names, then delete it."""
        records = list(_iter_wal(self.wal_path))
        if not records:
            self.wal_path.unlink(missing_ok=True)  # empty, or only a torn record
            return 0
        rows = sum(len(r.ids) for r in records if r.header["type"] == "rows")
        then = f"rerun: the {rows} logged rows are kept in {self.wal_path}"
        by_key: dict[str, list[_Record]] = {}
        for record in records:
            by_key.setdefault(record.header["key"], []).append(record)
        with _Snapshot(self) as snap:
            for key, recs in by_key.items():
                self._fold(snap, key, recs, then)
        self.wal_path.unlink()
        _fsync_dir(self.path.parent)
        if merge:
            self._merge(list(by_key))
        return len(records)

    def _fold(self, snap: _Snapshot, key: str, recs: list[_Record], then: str) -> None:
        """One group's logged records as a new segment."""
        table = _reduce(recs)
        groups = [r for r in recs if r.header["type"] == "group"]
        previous = snap.attrs(key) if key in snap.keys() else None
        if previous is None and not groups:
            raise FeatkitError(f"the log {self.wal_path} has rows for {key}, a group the store does not hold")
        attrs = {k: v for k, v in (previous or {}).items() if not k.startswith("_")}
        if previous is None:
            attrs.update(created=_now(), featkit_version=__version__)
        for rec in groups:
            attrs.update(rec.header["meta"])
        if previous is not None:
            attrs["dtype"] = str(snap.tables(key)[-1].features.dtype)  # what is stored, whatever a writer asked
        attrs["updated"] = _now()
        dim = int(attrs["dim"])
        aux = {}
        for rec in recs:
            if rec.header["type"] == "aux":
                h = rec.header
                data = np.fromfile(self.wal_path, dtype=h["dtype"], count=int(np.prod(h["shape"])), offset=rec.offset)
                aux[h["name"]] = (data.reshape(h["shape"]), h.get("attrs", {}))

        seq = snap.next_seq(key)
        folder = self._group_folder(key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _disk_error(err, folder, "making a segment folder", then) from None
        extra = sum(a.nbytes for a, _ in aux.values()) + sum(len(r) for r in table.reasons) + table.failed.nbytes
        _check_space(self.path.parent, _table_bytes(table.ids, np.flatnonzero(table.done), dim, attrs["dtype"], extra),
                     f"checkpointing {key}", then)
        with _new_file(folder / f"{seq:06d}-{seq:06d}.h5", f"checkpointing {key}", then) as tmp:
            with _h5_new(tmp) as f:
                _put(f, "ids", table.ids)
                ds = _features(f, len(table.ids), dim, attrs["dtype"])
                for k, rows, positions in table.kept:
                    n, width = len(recs[k].ids), recs[k].header["dim"]
                    feats = np.fromfile(self.wal_path, np.float32, n * width, offset=recs[k].offset)
                    _write_runs(ds, positions, feats.reshape(n, width)[rows].astype(ds.dtype))
                _write_tail(f, table.done, table.failed, table.reasons, aux,
                            {**attrs, "_key": key, "_first": seq, "_last": seq})

    def _merge(self, keys: list[str]) -> None:
        """Amortised upkeep after a checkpoint: fold segments into the base, or merge a group's newest ones."""
        with _Snapshot(self) as snap:
            live = {k: snap.segments(k) for k in snap.folders}
            total = sum(p.stat().st_size for segs in live.values() for _, _, p in segs)
            base = self.path.stat().st_size if self.path.exists() else 0
            try:
                if total and total >= MERGE_RATIO * base:
                    self._rewrite_base(snap)
                else:
                    for key in keys:
                        sizes = [p.stat().st_size for _, _, p in live.get(key, [])]
                        j = len(sizes) - 1
                        while j > 0 and sizes[j - 1] <= sum(sizes[j:]):
                            j -= 1
                        if j < len(sizes) - 1:
                            self._merge_segments(snap, key, snap.tables(key)[-(len(sizes) - j):])
            except _NoSpace:
                pass  # the segments stay as they are: every read still works, the next checkpoint tries again
        self._collect_garbage()

    def _merge_segments(self, snap: _Snapshot, key: str, tables: list[_Table]) -> None:
        first, last = tables[0].seq[0], tables[-1].seq[1]
        attrs = {k: v for k, v in tables[-1].attrs().items() if not k.startswith("_")}
        then = "rerun: nothing is lost (the segments stay until merged)"
        with _new_file(self._group_folder(key) / f"{first:06d}-{last:06d}.h5", f"merging segments of {key}",
                       then) as tmp:
            with _h5_new(tmp) as f:
                _merge_into(f, tables, {**attrs, "_key": key, "_first": first, "_last": last}, then=then)

    def _rewrite_base(self, snap: _Snapshot, *, lost: list | None = None) -> None:
        """A new base holding every group's rows, renamed in; with ``lost`` (repair), the readable ones."""
        then = "rerun: nothing is lost (the old base and segments stay until the new one is complete)"
        try:
            old = dict(snap.base.attrs) if snap.base is not None else {}
        except OSError:
            old = {}  # repairing a base whose root attributes are damaged: only "created" is lost
        with _new_file(self.path, "folding segments into the base", then) as tmp:
            with _h5_new(tmp) as f:
                f.attrs.update({"featkit_store": 2, "featkit_version": __version__,
                                "created": _plain(old.get("created", _now())), "updated": _now()})
                for key in snap.keys():
                    tables = snap.tables(key)
                    seq = max([snap.base_keys.get(key, 0), *(t.seq[1] for t in tables if t.seq)])
                    try:
                        attrs = {k: v for k, v in tables[-1].attrs().items() if not k.startswith("_")}
                        _merge_into(f.create_group(key), tables, {**attrs, "_seq": seq}, then=then, lost=lost)
                    except _Damaged as err:
                        if lost is None:
                            raise
                        lost.append(err)  # nothing of this group is readable here: extract makes it again
                        del f[key]

    def _collect_garbage(self) -> None:
        """Delete what a merge superseded or a killed writer left half-written."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        with _Snapshot(self, tolerant=True) as snap:  # a damaged base folds nothing in: then only tmp files go
            for key, folder in snap.folders.items():
                live = {p for _, _, p in snap.segments(key)}
                for p in folder.iterdir():
                    if (p.name.endswith(".tmp") and p.name.startswith(".")) or (_parse_segment(p) and p not in live):
                        p.unlink(missing_ok=True)
                for empty in (folder, folder.parent, self.segments_dir):
                    if empty.is_dir() and not any(empty.iterdir()):
                        empty.rmdir()

    # -- checking ----------------------------------------------------------------------
    def verify(self, *, repair: bool = False) -> dict:
        """Read every byte of the store; with ``repair``, set damaged files aside and keep every readable row.

        Returns a report: ``ok``, the ``problems`` (file, group, what, image ids), the ids a
        rerun of extract will recompute per group (``recompute``), files without checksums
        (written before they existed), and what was ``set_aside`` in ``<name>.h5.damaged/``.
        """
        if not self.exists():
            raise self._missing()
        if not repair:
            return self._read(lambda snap: _verify(self, snap), recover=False, tolerant=True)
        with self._locked():
            self._collect_garbage()
            try:
                self._checkpoint(merge=False)  # a dead writer's log first, so that its rows are checked too
            except _Damaged:
                pass  # replayed once the store reads again
            with _Snapshot(self, tolerant=True) as snap:
                report = _verify(self, snap)
                report["set_aside"] = _repair(self, snap, report)
            self._collect_garbage()
            self._checkpoint(merge=False)
            done = self._read(lambda snap: {k: set(self._done_ids(snap, k)) for k in report["recompute"]
                                            if k in snap.keys()}, recover=False)
            report["recompute"] = {key: [i for i in ids if i not in done.get(key, ())]
                                   for key, ids in report["recompute"].items()}
            report["repaired"] = bool(report["set_aside"] or report["not_checksummed"])
        return report


    @staticmethod
    def _done_ids(snap: _Snapshot, key: str) -> list[str]:
        index = _index(snap.tables(key))
        return _as_str(index.ids[index.code == 2]).tolist()


def _selected(index: _Index, ids) -> np.ndarray:
    rows = np.flatnonzero(index.code == 2)
    if ids is not None:
        rows = rows[np.isin(index.ids[rows], _as_bytes(ids if isinstance(ids, np.ndarray) else list(ids)))]
    return rows


# -- verify and repair ---------------------------------------------------------------------
def _verify(store: FeatureStore, snap: _Snapshot) -> dict:
    """Read every chunk of every dataset of every file; collect what cannot be read."""
    problems: list[_Damaged] = []
    unchecked: set[str] = set()
    opened, nbytes = set(), 0
    for key in snap.keys():
        for table in snap.tables(key):
            found, size = _scan(table)
            problems += found
            nbytes += size
            opened.add(table.file)
            if not found and not table.checksummed:
                unchecked.add(str(table.file))
    problems = snap.broken + problems
    records = list(_iter_wal(store.wal_path))
    wal_size = store.wal_path.stat().st_size if store.wal_path.exists() else 0
    recompute: dict[str, list[str]] = {}
    for p in problems:
        if p.key:
            recompute.setdefault(p.key, [])
            recompute[p.key] += [i for i in p.ids if i not in recompute[p.key]]
    return {
        "path": str(store.path), "ok": not problems, "files": len(opened | {p.file for p in snap.broken}),
        "bytes": nbytes, "log": {"records": len(records), "torn_bytes": wal_size - (records[-1].end if records else 0)},
        "not_checksummed": sorted(unchecked - {str(p.file) for p in problems}),
        "problems": [{"file": str(p.file), "key": p.key, "what": p.what, "ids": p.ids, "error": p.error}
                     for p in problems],
        "recompute": recompute, "set_aside": [], "repaired": False,
    }


def _scan(table: _Table) -> tuple[list[_Damaged], int]:
    """Read every chunk of every dataset of a table; damaged row ranges name their ids."""
    try:
        table.attrs()
        datasets = table._datasets()
    except _Damaged as err:
        return [err], 0
    except OSError as err:
        return [table.damaged("the group", err)], 0
    problems, nbytes = [], 0
    for ds in datasets:
        name = ds.name[len(table.group.name):].lstrip("/")
        for rows, data in _chunks(ds):
            if not isinstance(data, OSError):
                nbytes += np.asarray(data).nbytes
                continue
            ids = table._known_ids(np.arange(rows.start, rows.stop)) if name in ("ids", "done", "features") else None
            problems.append(table.damaged(f"{name} rows {rows.start}-{rows.stop - 1}", data, ids))
    return problems, nbytes


def _repair(store: FeatureStore, snap: _Snapshot, report: dict) -> list[str]:
    """Keep damaged files aside; rewrite what they held from its readable rows (the base with everything)."""
    damaged = {Path(p["file"]) for p in report["problems"]}
    rewrite = damaged | {Path(f) for f in report["not_checksummed"]}
    tables = {t.file: t for key in snap.keys() for t in snap.tables(key) if t.seq}
    aside, stamp = [], time.strftime("%Y%m%dT%H%M%S")
    then = "rerun `featkit verify`"
    for path in sorted(damaged):
        kept = store.damaged_dir / f"{stamp}-{path.relative_to(store.path.parent).as_posix().replace('/', '__')}"
        try:
            store.damaged_dir.mkdir(exist_ok=True)
            if path == store.path and snap.base is not None or path in tables:
                os.link(path, kept)  # the damaged file stays, under this name, until the user deletes it
            else:
                os.rename(path, kept)  # it cannot be opened at all: nothing in it is readable
        except OSError as err:
            raise _disk_error(err, store.damaged_dir, f"setting {path} aside", then) from None
        aside.append(str(kept))
    if store.path in rewrite and snap.base is not None:
        store._rewrite_base(snap, lost=[])  # folds every segment in too: they need no repair of their own
        return aside
    for path in sorted(rewrite & set(tables)):
        table = tables[path]
        try:
            attrs = {k: v for k, v in table.attrs().items() if not k.startswith("_")}
        except _Damaged:
            path.unlink()  # not even its group's attributes read: its copy is aside, extract redoes its rows
            continue
        with _new_file(path, f"repairing {path.name}", then) as tmp:
            with _h5_new(tmp) as f:
                _merge_into(f, [table], {**attrs, "_key": table.key, "_first": table.seq[0], "_last": table.seq[1]},
                            then=then, lost=[])
    return aside


class StoreWriter:
    """The single writer of a store: lock, log, checkpoint. Use as a context manager."""

    def __init__(self, store: FeatureStore, *, checkpoint_seconds: float = 300.0) -> None:
        self.store = store
        self.checkpoint_seconds = checkpoint_seconds
        self._lock = FileLock(store.lock_path)
        self._log = _Log(store.wal_path)
        self._last_checkpoint = time.monotonic()
        self._last_sync = time.monotonic()
        self._known: dict[str, list[np.ndarray]] = {}  # sorted ids each group accepts
        self._dims: dict[str, int] = {}

    def __enter__(self) -> StoreWriter:
        self.store._acquire(self._lock)
        try:
            self.store._collect_garbage()
            self.store._checkpoint()  # replay what a crashed writer left
        except BaseException:
            self.store._release(self._lock)
            raise
        return self

    def __exit__(self, exc_type, *_) -> None:
        try:
            self._log.close()
            try:
                self.store._checkpoint()
            except FeatkitError:
                if exc_type is None:
                    raise  # else the first error is the one to tell; the log keeps the rows for the next run
        finally:
            self.store._release(self._lock)

    # -- records ---------------------------------------------------------------------
    def _append(self, record: bytes, what: str) -> None:
        try:
            self._log.append(record)
            now = time.monotonic()
            if now - self._last_sync > 5.0:
                self._log.sync()  # on disk every few seconds: survives power loss
                self._last_sync = now
        except OSError as err:
            kept = f"rerun: what was logged before it is kept in {self.store.wal_path}"
            raise _disk_error(err, self.store.path.parent, f"logging {what}", kept) from None
        if time.monotonic() - self._last_checkpoint > self.checkpoint_seconds:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Fold the log into the store now (readers then see the rows)."""
        self._log.close()
        self.store._checkpoint()
        self._last_checkpoint = time.monotonic()

    def ensure_group(self, meta: GroupMeta, ids) -> None:
        """Create ``backbone/variant`` or check it agrees with ``meta``; add new ids. Writes only what changed."""
        key = f"{meta.backbone}/{meta.variant}"
        ids = _as_bytes(ids)
        _, first = np.unique(ids, return_index=True)
        ids = ids[np.sort(first)]

        def stored(snap: _Snapshot):
            if key not in snap.keys():
                return None
            tables = snap.tables(key)
            return tables[-1].attrs(), str(tables[-1].features.dtype), _index(tables).sorted_ids

        found = self.store._read(stored, recover=False)
        attrs = meta.attrs()
        if found is None:
            new, changed, known = ids, True, []
        else:
            old, dtype, sorted_ids = found
            _check_compatible(self.store.path, key, _public_meta(old), meta)
            attrs["dtype"] = dtype
            new = ids[~_contains(sorted_ids, ids)]
            changed = any(_plain(old.get(k)) != _plain(v) for k, v in attrs.items())
            known = [sorted_ids]
        if len(new) or changed:
            self._append(_group_record(key, attrs, new), f"the rows of {key}")
            self.checkpoint()
        self._known[key] = [*known, np.sort(new)]
        self._dims[key] = meta.dim

    def _accepts(self, key: str, ids: np.ndarray) -> None:
        """Refuse, before it reaches the log, a record the checkpoint could not apply."""
        if key not in self._known:
            def stored(snap: _Snapshot):
                tables = snap.group(key)  # raises, naming the groups there are
                return _index(tables).sorted_ids, int(tables[-1].features.shape[1])

            sorted_ids, self._dims[key] = self.store._read(stored, recover=False)
            self._known[key] = [sorted_ids]
        unknown = np.ones(len(ids), bool)
        for known in self._known[key]:
            unknown &= ~_contains(known, ids)
        if unknown.any():
            raise FeatkitError(f"{int(unknown.sum())} id(s) are not rows of {key} "
                               f"(e.g. {str(_as_str(ids[unknown][:1])[0])!r}); add them with ensure_group first")

    def write_rows(self, key: str, ids, features: np.ndarray, failures: list[tuple[str, str]] = ()) -> None:
        ids, failures = _as_bytes(ids), [(str(i), str(e)) for i, e in failures]
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.shape[0] != len(ids):
            raise FeatkitError(f"write_rows got {len(ids)} ids but {features.shape[0]} feature rows")
        self._accepts(key, np.concatenate([ids, _as_bytes([i for i, _ in failures])]) if failures else ids)
        if len(ids) and features.shape[1] != self._dims[key]:
            raise FeatkitError(f"write_rows got {features.shape[1]}-dimensional rows for {key}, "
                               f"which holds {self._dims[key]}")
        rows = features if features.ndim == 2 else features.reshape(len(ids), -1)  # (0, dim) when all failed
        self._append(_rows_record(key, ids, rows, failures),
                     f"a batch of {len(ids)} rows")

    def write_aux(self, key: str, name: str, data: np.ndarray, attrs: dict | None = None) -> None:
        """Store ``data`` beside ``key``'s features as ``aux/<name>``, replacing an older one."""
        self._accepts(key, np.zeros(0, "S1"))
        data = np.ascontiguousarray(data)
        if data.dtype.kind not in "biufc":
            raise FeatkitError(f"aux array {name!r} must be numeric, got dtype {data.dtype}")
        if not name or "/" in name or name in (".", ".."):
            raise FeatkitError(f"aux array name {name!r} must be a plain name (no '/')")
        attrs = {k: (json.dumps(v, default=_json_default) if isinstance(v, dict) or v is None else _plain(v))
                 for k, v in (attrs or {}).items()}
        header = {"type": "aux", "key": key, "name": name, "dtype": data.dtype.str, "shape": list(data.shape),
                  "attrs": attrs}
        self._append(_encode(header, data.tobytes()), f"aux array {name!r}")


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
