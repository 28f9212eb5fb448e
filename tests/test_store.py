"""The HDF5 feature store (issue 2 item 6, issue 9 item 5): layout, resume, one writer, no mixing,
crash safety, and a cost that follows the work rather than the store's size.

These tests drive ``FeatureStore``/``StoreWriter`` directly with small arrays; disk faults
and damaged files are in test_store_faults.py, stores written before segments in
test_store_v1.py, the end-to-end resume through `featkit extract` in test_extract.py and
the kill -9 test on real images in test_crash.py.
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

import featkit.store as store_module
from featkit.backbones import Preprocess
from featkit.embeddings import resolve_key
from featkit.errors import FeatkitError
from featkit.store import FeatureStore, GroupMeta, _as_bytes, _group_record, _rows_record

DIM = 6
IDS = [f"img/{i:03d}.jpg" for i in range(20)]
KEY = "toy/v1"


def _meta(**changes) -> GroupMeta:
    pre = Preprocess()
    meta = GroupMeta(backbone="toy", variant="v1", weights="v1", weights_sha256="ab" * 32, preprocess=pre.to_dict(),
                     preprocess_fingerprint=pre.fingerprint, dim=DIM, extra={"manifest_hash": "m1"})
    return replace(meta, **changes)


def _feats(ids, dim: int = DIM) -> np.ndarray:
    """A distinct, checkable row per id."""
    return np.array([[int(i[4:7]) + k / 10 for k in range(dim)] for i in ids], np.float32)


def _store(tmp_path, name="s.h5") -> FeatureStore:
    return FeatureStore(tmp_path / "features" / name)


def _files(store: FeatureStore) -> dict[str, tuple[bytes, int]]:
    """Every data file of the store: its bytes and mtime."""
    return {str(p.relative_to(store.path.parent)): (p.read_bytes(), p.stat().st_mtime_ns) for p in store.files()}


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


def test_layout_is_plain_h5py_with_checksums(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        batch = IDS[10:14] + IDS[2:5]  # out of order and not contiguous
        w.write_rows(KEY, batch, _feats(batch), failures=[(IDS[7], "truncated image: bad")])
        w.write_rows(KEY, IDS[15:17], _feats(IDS[15:17]))
    store.compact()  # everything in the one .h5
    assert not store.wal_path.exists() and not store.segments_dir.exists()
    assert store.files() == [store.path]

    with h5py.File(store.path, "r") as f:
        group = f[KEY]
        assert list(group["ids"].asstr()[:]) == IDS
        done = group["done"][:]
        assert done.dtype == bool
        assert set(np.flatnonzero(done)) == {2, 3, 4, 10, 11, 12, 13, 15, 16}
        feats = group["features"]
        assert feats.shape == (20, DIM) and feats.dtype == np.float32 and feats.chunks[1] == DIM
        np.testing.assert_array_equal(feats[11], _feats([IDS[11]])[0])
        assert list(group["failures/ids"].asstr()[:]) == [IDS[7]]
        assert list(group["failures/errors"].asstr()[:]) == ["truncated image: bad"]
        for name in ("ids", "done", "features", "failures/ids", "failures/errors"):
            assert group[name].fletcher32, name  # every stored byte is checksummed
        attrs = dict(group.attrs)
        assert attrs["backbone"] == "toy" and attrs["weights"] == "v1" and attrs["weights_sha256"] == "ab" * 32
        assert Preprocess.from_dict(json.loads(attrs["preprocess"])) == Preprocess()
        assert attrs["preprocess_fingerprint"] == Preprocess().fingerprint
        assert attrs["manifest_hash"] == "m1" and attrs["featkit_version"]
        assert attrs["dim"] == DIM and "created" in attrs and "updated" in attrs

    fs = store.load(KEY)  # done rows only, in store order
    assert fs.ids.dtype.kind == "U"  # numpy unicode, not a Python object per id
    assert list(fs.ids) == [IDS[i] for i in (2, 3, 4, 10, 11, 12, 13, 15, 16)]
    np.testing.assert_array_equal(fs.X, _feats(fs.ids))
    sub = store.load(KEY, ids=[IDS[16], IDS[3], IDS[0]])
    assert list(sub.ids) == [IDS[3], IDS[16]]
    status = store.status(KEY)
    assert status["ids"].dtype.kind == "U" and status["failures"] == {IDS[7]: "truncated image: bad"}
    info = store.info()["groups"][0]
    assert (info["rows"], info["done"], info["failed"], info["pending"]) == (20, 9, 1, 10)
    assert info["checksummed"] and info["segments"] == 0


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


def test_non_ascii_ids_round_trip(tmp_path):
    store = _store(tmp_path)
    ids = ["img/001/café.jpg", "img/002/日本.png", "img/003/plain.jpg"]
    with store.writer() as w:
        w.ensure_group(_meta(), ids)
        w.write_rows(KEY, ids[:2], np.ones((2, DIM), np.float32), failures=[(ids[2], "not an image")])
    assert list(store.load(KEY).ids) == ids[:2] and list(store.status(KEY)["ids"]) == ids
    assert store.status(KEY)["failures"] == {ids[2]: "not an image"}


def test_float16_storage(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(dtype="float16"), IDS)
        w.write_rows(KEY, IDS, _feats(IDS))
    fs = store.load(KEY)  # the stored dtype: half the memory (issue 6)
    assert fs.X.dtype == np.float16 and store.memory_needed(KEY) == fs.X.nbytes
    np.testing.assert_allclose(fs.X, _feats(IDS), rtol=1e-3)
    assert store.load(KEY, dtype=np.float32).X.dtype == np.float32
    # a later float32 writer keeps the stored dtype, and the attributes say so
    with store.writer() as w:
        w.ensure_group(_meta(dtype="float32"), IDS)
        w.write_rows(KEY, IDS[:2], _feats(IDS[:2]) + 1)
    assert store.meta(KEY)["dtype"] == "float16" and store.info()["groups"][0]["dtype"] == "float16"
    assert store.load(KEY).X.dtype == np.float16
    store.compact()
    with h5py.File(store.path, "r") as f:
        assert f[KEY]["features"].dtype == np.float16


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
    assert store.read_aux(KEY, "nothing") is None and store.read_aux("toy/v9", "umap_2d") is None
    store.compact()
    assert store.read_aux(KEY, "umap_2d")[0].shape == (20, 1) and store.info()["groups"][0]["aux"] == ["umap_2d"]


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
    assert resolve_key(store, backbone="other") == "other/v1"
    assert resolve_key(store, backbone="toy", variant="v2") == "toy/v2"
    with pytest.raises(FeatkitError, match="several feature sets for toy/\\*: toy/v1, toy/v2"):
        resolve_key(store, backbone="toy")
    with pytest.raises(FeatkitError, match="no features for resnet50/\\*; it holds: other/v1, toy/v1, toy/v2"):
        resolve_key(store, backbone="resnet50")
    with pytest.raises(FeatkitError, match="no features for 'toy/v9'"):
        store.load("toy/v9")


def test_variant_names_never_become_paths(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(variant="../../escaped"), IDS)
        w.write_rows("toy/../../escaped", IDS[:2], _feats(IDS[:2]))
        w.ensure_group(_meta(variant=".."), IDS)
    assert store.keys() == ["toy/..", "toy/../../escaped"]
    np.testing.assert_array_equal(store.load("toy/../../escaped").X, _feats(IDS[:2]))
    inside = store.path.parent.resolve()
    assert all(p.resolve().is_relative_to(inside) for p in tmp_path.rglob("*") if p.is_file())


def test_bad_records_are_refused_before_the_log(tmp_path):
    """A record the checkpoint could not apply must never reach the log (it would poison the store)."""
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        with pytest.raises(FeatkitError, match="not rows of toy/v1.*'img/999.jpg'"):
            w.write_rows(KEY, ["img/999.jpg"], _feats(["img/999.jpg"]))
        with pytest.raises(FeatkitError, match="not rows of toy/v1.*'img/998.jpg'"):
            w.write_rows(KEY, [], np.zeros((0, DIM)), failures=[("img/998.jpg", "bad")])
        with pytest.raises(FeatkitError, match="no features for 'toy/v7'"):
            w.write_aux("toy/v7", "x", np.zeros(3))
        with pytest.raises(FeatkitError, match="2 ids but 1 feature rows"):
            w.write_rows(KEY, IDS[:2], _feats(IDS[:1]))
        with pytest.raises(FeatkitError, match="got 7-dimensional rows for toy/v1, which holds 6"):
            w.write_rows(KEY, IDS[:1], _feats(IDS[:1], dim=7))
        with pytest.raises(FeatkitError, match="plain name"):
            w.write_aux(KEY, "a/b", np.zeros(3))
        w.write_rows(KEY, IDS[:2], _feats(IDS[:2]))
    assert list(store.load(KEY).ids) == IDS[:2]


def test_the_newest_write_of_a_row_wins(tmp_path, monkeypatch):
    """Within one log and across segments: features replace a failure, a failure replaces features."""
    monkeypatch.setattr(store_module, "MERGE_RATIO", float("inf"))  # keep every segment
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        w.write_rows(KEY, IDS[:4], _feats(IDS[:4]), failures=[(IDS[4], "unreadable")])
        w.write_rows(KEY, IDS[:1], _feats(IDS[:1]) + 100)  # the same log: later wins
    with store.writer() as w:  # another segment
        w.write_rows(KEY, IDS[4:5], _feats(IDS[4:5]), failures=[(IDS[1], "now broken")])
    assert len(store.files()) >= 2 and not store.path.exists()  # segments only
    for check in range(2):  # as segments, then folded into the base
        status = store.status(KEY)
        assert status["failures"] == {IDS[1]: "now broken"}
        fs = store.load(KEY)
        assert list(fs.ids) == [IDS[0], IDS[2], IDS[3], IDS[4]]
        np.testing.assert_array_equal(fs.X, np.vstack([_feats(IDS[:1]) + 100, _feats([IDS[2], IDS[3], IDS[4]])]))
        store.compact()


def test_a_run_with_nothing_to_do_writes_nothing(tmp_path):
    store = _store(tmp_path)
    ids = [f"img/{i:03d}.jpg" for i in range(1000)]
    with store.writer() as w:
        w.ensure_group(_meta(dim=64), ids)
        w.write_rows(KEY, ids[:900], _feats(ids[:900], 64))
    with store.writer() as w:
        w.write_rows(KEY, ids[900:901], _feats(ids[900:901], 64))  # a segment beside the base
    before = _files(store)
    assert len(before) == 2
    with store.writer() as w:  # what `featkit extract` does when every row is done
        w.ensure_group(_meta(dim=64), ids)
        assert store.status(KEY)["done"].sum() == 901
        w.checkpoint()
    assert _files(store) == before  # byte-identical, same mtimes, no new file
    assert not store.wal_path.exists()


def test_checkpoint_and_aux_write_cost_what_they_write(tmp_path):
    """A batch or an aux array adds a segment the size of what it writes; the base is never rewritten."""
    store = _store(tmp_path)
    dim, n = 64, 12_000
    ids = [f"img/{i:06d}.jpg" for i in range(n)]
    rng = np.random.default_rng(0)
    with store.writer() as w:
        w.ensure_group(_meta(dim=dim), ids)
        for start in range(0, n - 256, 4096):
            chunk = ids[start : min(start + 4096, n - 256)]
            w.write_rows(KEY, chunk, rng.normal(size=(len(chunk), dim)).astype(np.float32))
    store.compact()
    base = store.path.stat()
    assert base.st_size > 3e6  # 11,744 rows x 64 float32

    def added() -> int:
        return sum(p.stat().st_size for p in store.files() if p != store.path)

    batch = rng.normal(size=(256, dim)).astype(np.float32)
    with store.writer() as w:
        w.write_rows(KEY, ids[-256:], batch)
        w.checkpoint()
        assert added() < 0.1 * base.st_size and added() > batch.nbytes  # the batch, not the store
        w.write_aux(KEY, "umap_2d", np.zeros((n, 2), np.float32))
    assert added() < 0.2 * base.st_size
    after = store.path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (base.st_ino, base.st_mtime_ns, base.st_size)
    np.testing.assert_array_equal(store.load(KEY, ids=ids[-256:]).X, batch)
    assert store.read_aux(KEY, "umap_2d")[0].shape == (n, 2)


def test_merges_keep_segments_few_and_the_work_amortised(tmp_path, monkeypatch):
    """Many checkpoints: a handful of segments at any time, and every byte rewritten a bounded number of times."""
    written = []
    real_replace = os.replace

    def counting_replace(src, dst):
        written.append(os.path.getsize(src))
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", counting_replace)
    store = _store(tmp_path)
    dim, batch, n = 32, 64, 64 * 80
    ids = [f"img/{i:06d}.jpg" for i in range(n)]
    most = 0
    with store.writer() as w:
        w.ensure_group(_meta(dim=dim), ids)
        for start in range(0, n, batch):
            w.write_rows(KEY, ids[start : start + batch], _feats(ids[start : start + batch], dim))
            w.checkpoint()
            most = max(most, len(list(store.segments_dir.glob("*/*/*.h5"))))
    data = n * dim * 4
    assert most <= 8  # log2(80 batches) + 1
    # copying the store at every checkpoint (what v1 did) would write 80 * 81 / 2 batches = 40x the data;
    # here (measured 7.8x, much of it HDF5 overhead on 8 KiB batches) it stays a constant factor
    assert sum(written) < 12 * data
    fs = store.load(KEY)
    assert list(fs.ids) == ids
    np.testing.assert_array_equal(fs.X, _feats(ids, dim))


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
    # temporary files left by a writer killed mid-checkpoint are cleaned up
    (store.path.parent / f".{store.path.name}.99999.tmp").write_bytes(b"half a base")
    folder = next(store.segments_dir.glob("*/*"), None) or store.segments_dir / "toy" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".000009-000009.h5.99999.tmp").write_bytes(b"half a segment")
    assert store.keys() == [KEY]  # the reader replays the log
    np.testing.assert_array_equal(store.load(KEY).X, _feats(IDS[5:9]))
    assert not store.wal_path.exists() and not store.owner_path.exists()
    assert not list(store.path.parent.rglob("*.tmp"))


def test_torn_log_tail_is_ignored(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        w.write_rows(KEY, IDS[:2], _feats(IDS[:2]))
    # what a writer killed in the middle of appending leaves: whole records, then a torn one
    whole = _rows_record(KEY, _as_bytes(IDS[2:4]), _feats(IDS[2:4]), [])
    torn = _rows_record(KEY, _as_bytes(IDS[4:6]), _feats(IDS[4:6]), [])
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
    """kill -9 between renaming in the new segment and deleting the log replays it again."""
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
    log = (_group_record(KEY, _meta().attrs(), _as_bytes(["img/100.jpg"]))
           + _rows_record(KEY, _as_bytes(IDS[:3]), _feats(IDS[:3]), [(IDS[5], "not an image")]))
    store.wal_path.write_bytes(log)
    store.recover()
    once = store.load(KEY)
    store.wal_path.write_bytes(log)
    store.recover()
    twice = store.load(KEY)
    np.testing.assert_array_equal(once.X, twice.X)
    assert list(twice.ids) == IDS[:3]
    status = store.status(KEY)
    assert list(status["ids"]) == IDS + ["img/100.jpg"] and status["failures"] == {IDS[5]: "not an image"}


def test_missing_store_is_a_clear_error(tmp_path):
    store = _store(tmp_path)
    assert store.keys() == [] and store.read_aux(KEY, "x") is None
    with pytest.raises(FeatkitError, match="no feature store at .*s.h5; run `featkit extract` first"):
        store.info()
    with pytest.raises(FeatkitError, match="no feature store"):
        store.load(KEY)
    assert not store.path.parent.exists()  # reading created nothing


def test_a_batch_whose_images_all_failed_is_recorded(tmp_path):
    """Every image of a batch failed to decode: no rows, only failures (a (0, dim) feature block)."""
    store = _store(tmp_path)
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)
        w.write_rows("toy/v1", np.array([], dtype=str), np.zeros((0, _meta().dim), np.float32),
                     [(IDS[0], "not an image"), (IDS[1], "empty file (0 bytes)")])
    status = store.status("toy/v1")
    assert status["failures"] == {IDS[0]: "not an image", IDS[1]: "empty file (0 bytes)"}
    assert not status["done"].any()
