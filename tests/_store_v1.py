"""Writes a store as featkit wrote it before segments existed (format v1), for test_store_v1.py.

The layout, as featkit 0.1 wrote it (one .h5, no checksums, nothing else beside it):

* root attrs ``created``, ``updated``, ``featkit_version``;
* per group ``<backbone>/<variant>`` (attrs: the GroupMeta fields, ``preprocess`` as JSON):
  ``ids`` (variable-length UTF-8, chunks 4096, unlimited), ``done`` (bool, same), ``features``
  (chunks 256 x dim, unlimited rows), ``failures/ids`` and ``failures/errors`` (variable-length
  UTF-8), ``aux/<name>`` (an array with attrs);
* the writer's log ``<store>.wal``: FKW1 records, each ``struct("<4sQI")`` (magic, payload
  length, crc32 of the payload), then the payload: a uint32 header length, a JSON header that
  carries the ids, and the rows' bytes.

It holds two groups: ``toy/v1`` (float32: rows 2-4 and 10-13 done, img/007 failed, an aux
array) and ``toy/half`` (float16, all done), and — with ``log=True`` — the log of a writer
that died after logging rows 5-6 of ``toy/v1``. Row values follow ``feats``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np

DIM = 6
IDS = [f"img/{i:03d}.jpg" for i in range(20)]
DONE = IDS[2:5] + IDS[10:14]
FAILED = {IDS[7]: "truncated image: bad"}
PREPROCESS = {"crop_size": 224, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406], "resize_size": 256,
              "std": [0.229, 0.224, 0.225]}
STAMP = "2026-11-30T21:27:05+0000"
TEXT = h5py.string_dtype()


def feats(ids) -> np.ndarray:
    return np.array([[int(i[4:7]) + k / 10 for k in range(DIM)] for i in ids], np.float32)


def _group(f: h5py.File, variant: str, dtype: str, done: list[str], failures: dict[str, str]) -> h5py.Group:
    g = f.create_group(f"toy/{variant}")
    g.attrs.update(backbone="toy", variant=variant, weights="v1", weights_sha256="ab" * 32, dim=np.int64(DIM),
                   dtype=dtype, preprocess=json.dumps(PREPROCESS, sort_keys=True),
                   preprocess_fingerprint="679c8bc319961c08", manifest_hash="m1", featkit_version="0.1.0",
                   created=STAMP, updated=STAMP)
    rows = np.isin(IDS, done)
    g.create_dataset("ids", data=np.array(IDS, dtype=object), dtype=TEXT, chunks=(4096,), maxshape=(None,))
    g.create_dataset("done", data=rows, chunks=(4096,), maxshape=(None,))
    X = np.zeros((len(IDS), DIM), dtype)
    X[rows] = feats(np.array(IDS)[rows])
    g.create_dataset("features", data=X, chunks=(256, DIM), maxshape=(None, DIM))
    for name, values in (("ids", list(failures)), ("errors", list(failures.values()))):
        g.create_dataset(f"failures/{name}", data=np.array(values, dtype=object), dtype=TEXT)
    return g


def _record(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    payload = struct.pack("<I", len(head)) + head + body
    return struct.pack("<4sQI", b"FKW1", len(payload), zlib.crc32(payload)) + payload


def write_store_v1(path: Path, *, log: bool = False) -> Path:
    """The v1 store at ``path`` (and, with ``log``, the log of a writer that died mid-run)."""
    with h5py.File(path, "w", libver="earliest") as f:
        f.attrs.update(created=STAMP, featkit_version="0.1.0", updated=STAMP)
        v1 = _group(f, "v1", "float32", DONE, FAILED)
        v1.create_dataset("aux/umap_2d", data=np.arange(40, dtype=np.float32).reshape(20, 2))
        v1["aux/umap_2d"].attrs["n_neighbors"] = np.int64(15)
        _group(f, "half", "float16", IDS, {})
    if log:
        died = IDS[5:7]
        header = {"type": "rows", "key": "toy/v1", "ids": died, "dtype": "float32", "failures": []}
        Path(f"{path}.wal").write_bytes(_record(header, feats(died).tobytes()))
    return path
