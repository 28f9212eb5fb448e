"""The HDF5 feature store (issue 2, item 6): layout, resume, one writer, no mixing, crash safety.

These tests drive ``FeatureStore``/``StoreWriter`` directly with small arrays; the
end-to-end resume through `featkit extract` is in test_extract.py and the kill -9
test on real images in test_crash.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import h5py
import numpy as np
import pytest

from featkit.backbones import Preprocess
from featkit.errors import FeatkitError
from featkit.store import FeatureStore, GroupMeta, _encode

DIM = 6
IDS = [f"img/{i:03d}.jpg" for i in range(20)]
KEY = "toy/v1"


def _meta(**changes) -> GroupMeta:
    pre = Preprocess()
    meta = GroupMeta(backbone="toy", variant="v1", weights="v1", weights_sha256="ab" * 32, preprocess=pre.to_dict(),
                     preprocess_fingerprint=pre.fingerprint, dim=DIM, extra={"manifest_hash": "m1"})
    return replace(meta, **changes)


def _feats(ids) -> np.ndarray:
    """A distinct, checkable row per id."""
    return np.array([[int(i[4:7]) + k / 10 for k in range(DIM)] for i in ids], np.float32)


def _store(tmp_path, name="s.h5") -> FeatureStore:
    return FeatureStore(tmp_path / "features" / name)


def _writer_script(path, ids, then: str) -> str:
    """A child process (no torch: starts fast) that opens a writer, writes ``ids``, prints 'ready', then ``then``."""
    meta = _meta()
    return textwrap.dedent(f"""
        import time, numpy as np
        from featkit.store import FeatureStore, GroupMeta
        ids = {list(ids)!r}
        feats = np.array({_feats(ids).tolist()!r}, np.float32)
        meta = GroupMeta(backbone="toy", variant="v1", weights="v1", weights_sha256={meta.weights_sha256!r},
                         preprocess={meta.preprocess!r}, preprocess_fingerprint={meta.preprocess_fingerprint!r},
                         dim={DIM}, extra={meta.extra!r})
        w = FeatureStore({str(path)!r}).writer().__enter__()
        w.ensure_group(meta, {IDS!r})
        w.write_rows("toy/v1", ids, feats)
        print("ready", flush=True)
        {then}
    """)


def test_layout_is_plain_h5py(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        batch = IDS[10:14] + IDS[2:5]  # out of order and not contiguous
        w.write_rows(KEY, batch, _feats(batch), failures=[(IDS[7], "truncated image: bad")])
        w.write_rows(KEY, IDS[15:17], _feats(IDS[15:17]))
    assert not store.wal_path.exists()  # folded into the file on exit

    with h5py.File(store.path, "r") as f:
        group = f[KEY]
        ids = group["ids"].asstr()[:]
        assert list(ids) == IDS
        done = group["done"][:]
        assert done.dtype == bool
        assert set(np.flatnonzero(done)) == {2, 3, 4, 10, 11, 12, 13, 15, 16}
        feats = group["features"]
        assert feats.shape == (20, DIM) and feats.dtype == np.float32
        assert feats.maxshape == (None, DIM) and feats.chunks[1] == DIM
        np.testing.assert_array_equal(feats[11], _feats([IDS[11]])[0])
        assert list(group["failures/ids"].asstr()[:]) == [IDS[7]]
        assert list(group["failures/errors"].asstr()[:]) == ["truncated image: bad"]
        attrs = dict(group.attrs)
        assert attrs["backbone"] == "toy" and attrs["weights"] == "v1" and attrs["weights_sha256"] == "ab" * 32
        assert Preprocess.from_dict(json.loads(attrs["preprocess"])) == Preprocess()
        assert attrs["preprocess_fingerprint"] == Preprocess().fingerprint
        assert attrs["manifest_hash"] == "m1" and attrs["featkit_version"]
        assert attrs["dim"] == DIM and "created" in attrs and "updated" in attrs

    fs = store.load(KEY)  # done rows only, in store order
    assert list(fs.ids) == [IDS[i] for i in (2, 3, 4, 10, 11, 12, 13, 15, 16)]
    np.testing.assert_array_equal(fs.X, _feats(fs.ids))
    sub = store.load(KEY, ids=[IDS[16], IDS[3], IDS[0]])
    assert list(sub.ids) == [IDS[3], IDS[16]]
    assert store.status(KEY)["failures"] == {IDS[7]: "truncated image: bad"}
    info = store.info()["groups"][0]
    assert (info["rows"], info["done"], info["failed"], info["pending"]) == (20, 9, 1, 10)


def test_new_ids_extend_and_done_rows_survive(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS[:10])
        w.write_rows(KEY, IDS[:10], _feats(IDS[:10]))
    with store.writer() as w:
        w.ensure_group(_meta(extra={"manifest_hash": "m2"}), IDS)  # the manifest grew
        w.write_rows(KEY, IDS[10:], _feats(IDS[10:]))
    fs = store.load(KEY)
    assert list(fs.ids) == IDS
    np.testing.assert_array_equal(fs.X, _feats(IDS))
    assert store.meta(KEY)["manifest_hash"] == "m2"


def test_float16_storage(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(dtype="float16"), IDS)
        w.write_rows(KEY, IDS, _feats(IDS))
    with h5py.File(store.path, "r") as f:
        assert f[KEY]["features"].dtype == np.float16
    fs = store.load(KEY)  # the stored dtype: half the memory (issue 6)
    assert fs.X.dtype == np.float16 and store.memory_needed(KEY) == fs.X.nbytes
    np.testing.assert_allclose(fs.X, _feats(IDS), rtol=1e-3)
    assert store.load(KEY, dtype=np.float32).X.dtype == np.float32
    # a later float32 writer keeps the stored dtype, and the attributes say so
    with store.writer() as w:
        w.ensure_group(_meta(dtype="float32"), IDS)
    assert store.meta(KEY)["dtype"] == "float16" and store.info()["groups"][0]["dtype"] == "float16"


def test_aux_round_trip(tmp_path):
    store = _store(tmp_path)
    coords = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        w.write_aux(KEY, "umap_2d", coords, {"n_neighbors": np.int64(15), "min_dist": 0.1, "metric": "cosine",
                                             "ids_hash": "x", "params": {"seed": 0}})
    data, attrs = store.read_aux(KEY, "umap_2d")
    np.testing.assert_array_equal(data, coords)
    assert attrs["n_neighbors"] == 15 and attrs["min_dist"] == 0.1 and attrs["metric"] == "cosine"
    assert json.loads(attrs["params"]) == {"seed": 0}
    assert store.info()["groups"][0]["aux"] == ["umap_2d"]
    with store.writer() as w:  # replaced, not duplicated
        w.write_aux(KEY, "umap_2d", coords[:, :1] * 2, {"metric": "euclidean"})
    data, attrs = store.read_aux(KEY, "umap_2d")
    assert data.shape == (20, 1) and attrs["metric"] == "euclidean"
    assert store.read_aux(KEY, "nothing") is None


def test_mixing_is_refused_but_another_variant_works(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        w.write_rows(KEY, IDS[:3], _feats(IDS[:3]))
    cases = {
        "weights sha256": _meta(weights_sha256="cd" * 32),
        "preprocessing": _meta(preprocess=Preprocess(resize_size=232).to_dict(),
                               preprocess_fingerprint=Preprocess(resize_size=232).fingerprint),
        "dimension": _meta(dim=DIM + 1),
    }
    for problem, meta in cases.items():
        with store.writer() as w, pytest.raises(FeatkitError) as err:
            w.ensure_group(meta, IDS)
        message = str(err.value)
        assert problem in message and "toy/v1" in message and "--variant" in message
    # the refused writers changed nothing
    assert store.meta(KEY)["weights_sha256"] == "ab" * 32 and len(store.load(KEY).ids) == 3
    with store.writer() as w:  # other weights under another variant name live side by side
        w.ensure_group(_meta(variant="v2", weights_sha256="cd" * 32), IDS)
        w.write_rows("toy/v2", IDS, _feats(IDS) + 1)
    assert store.keys() == ["toy/v1", "toy/v2"]
    np.testing.assert_array_equal(store.load("toy/v2").X, _feats(IDS) + 1)
    np.testing.assert_array_equal(store.load("toy/v1").X, _feats(IDS[:3]))


def test_resolve_key(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        w.ensure_group(_meta(variant="v2"), IDS)
        w.ensure_group(_meta(backbone="other"), IDS)
    assert store.resolve_key("other") == "other/v1"
    assert store.resolve_key("toy", "v2") == "toy/v2"
    with pytest.raises(FeatkitError, match="several feature sets for toy/\\*: toy/v1, toy/v2"):
        store.resolve_key("toy")
    with pytest.raises(FeatkitError, match="no features for resnet50/\\*; it holds: other/v1, toy/v1, toy/v2"):
        store.resolve_key("resnet50")
    with pytest.raises(FeatkitError, match="no features for 'toy/v9'"):
        store.load("toy/v9")


def test_bad_records_are_refused_before_the_log(tmp_path):
    """A record the checkpoint could not apply must never reach the log (it would poison the store)."""
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        with pytest.raises(FeatkitError, match="not rows of toy/v1.*'img/999.jpg'"):
            w.write_rows(KEY, ["img/999.jpg"], _feats(["img/999.jpg"]))
        with pytest.raises(FeatkitError, match="no features for 'toy/v7'"):
            w.write_aux("toy/v7", "x", np.zeros(3))
        with pytest.raises(FeatkitError, match="2 ids but 1 feature rows"):
            w.write_rows(KEY, IDS[:2], _feats(IDS[:1]))
        w.write_rows(KEY, IDS[:2], _feats(IDS[:2]))
    assert list(store.load(KEY).ids) == IDS[:2]


def test_second_writer_is_refused_in_process(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        with pytest.raises(FeatkitError, match=rf"being written by another featkit process \(pid {os.getpid()} "):
            with FeatureStore(store.path).writer():
                pass
        # readers are never blocked; they see the last checkpoint
        w.write_rows(KEY, IDS[:4], _feats(IDS[:4]))
        assert len(FeatureStore(store.path).load(KEY).ids) == 0
        w.checkpoint()
        assert len(FeatureStore(store.path).load(KEY).ids) == 4
    with store.writer():  # free again
        pass


def test_second_writer_is_refused_across_processes(tmp_path):
    store = _store(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", _writer_script(store.path, IDS[:3], "time.sleep(60)")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(FeatkitError, match=rf"another featkit process \(pid {child.pid} since"):
            with store.writer():
                pass
    finally:
        child.kill()
        child.wait()
    # kill -9 released the lock; the dead writer's rows are replayed from its log
    assert list(store.load(KEY).ids) == IDS[:3]
    with store.writer() as w:
        w.write_rows(KEY, IDS[3:5], _feats(IDS[3:5]))
    assert list(store.load(KEY).ids) == IDS[:5]


def test_killed_writer_is_recovered_by_a_reader(tmp_path):
    store = _store(tmp_path)
    child = subprocess.run([sys.executable, "-c", _writer_script(store.path, IDS[5:9], "import os; os.kill(os.getpid(), 9)")],
                           capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL and "ready" in child.stdout
    assert store.wal_path.exists() and store.owner_path.exists()
    # a temp copy left by a writer killed mid-checkpoint is cleaned up
    (store.path.parent / f".{store.path.name}.99999.tmp").write_bytes(b"half a copy")
    assert store.keys() == [KEY]  # the reader replays the log
    np.testing.assert_array_equal(store.load(KEY).X, _feats(IDS[5:9]))
    assert not store.wal_path.exists() and not store.owner_path.exists()
    assert not list(store.path.parent.glob("*.tmp"))


def test_torn_log_tail_is_ignored(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        w.write_rows(KEY, IDS[:2], _feats(IDS[:2]))
    # what a writer killed in the middle of appending leaves: whole records, then a torn one
    whole = _encode({"type": "rows", "key": KEY, "ids": IDS[2:4], "dtype": "float32", "failures": []},
                    _feats(IDS[2:4]).tobytes())
    torn = _encode({"type": "rows", "key": KEY, "ids": IDS[4:6], "dtype": "float32", "failures": []},
                   _feats(IDS[4:6]).tobytes())
    store.wal_path.write_bytes(whole + torn[: len(torn) - 9])
    assert list(store.load(KEY).ids) == IDS[:4]
    # a corrupt record (bit flip) stops the replay there, too
    flipped = bytearray(whole)
    flipped[-3] ^= 0xFF
    store.wal_path.write_bytes(bytes(flipped) + whole)
    assert list(store.load(KEY).ids) == IDS[:4]
    # garbage only
    store.wal_path.write_bytes(b"\x00garbage" * 10)
    assert store.keys() == [KEY] and not store.wal_path.exists()
    with store.writer() as w:
        w.write_rows(KEY, IDS[4:6], _feats(IDS[4:6]))
    np.testing.assert_array_equal(store.load(KEY).X, _feats(IDS[:6]))


def test_replaying_a_log_twice_changes_nothing(tmp_path):
    """kill -9 between swapping in the new file and deleting the log replays it again."""
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
    log = (_encode({"type": "group", "key": KEY, "meta": _meta().attrs() | {"preprocess": Preprocess().to_dict()},
                    "ids": IDS + ["img/100.jpg"]})
           + _encode({"type": "rows", "key": KEY, "ids": IDS[:3], "dtype": "float32",
                      "failures": [[IDS[5], "not an image"]]}, _feats(IDS[:3]).tobytes()))
    store.wal_path.write_bytes(log)
    store.recover()
    once = store.load(KEY)
    store.wal_path.write_bytes(log)
    store.recover()
    twice = store.load(KEY)
    np.testing.assert_array_equal(once.X, twice.X)
    assert list(twice.ids) == IDS[:3]
    assert store.status(KEY)["ids"].shape == (21,) and store.status(KEY)["failures"] == {IDS[5]: "not an image"}


def test_missing_store_is_a_clear_error(tmp_path):
    store = _store(tmp_path)
    assert store.keys() == [] and store.read_aux(KEY, "x") is None
    with pytest.raises(FeatkitError, match="no feature store at .*s.h5; run `featkit extract` first"):
        store.info()
    with pytest.raises(FeatkitError, match="no feature store"):
        store.load(KEY)
