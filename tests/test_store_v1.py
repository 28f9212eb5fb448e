"""Stores written before segments (one .h5, variable-length ids, no checksums) keep every row.

The v1 store is written at test time in the old layout (tests/_store_v1.py, checked
against a file featkit 0.1 wrote): two groups, a failure, an aux array, and the log of a
writer that died after logging a batch.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from _store_v1 import DONE, IDS, feats as _feats, write_store_v1
from featkit.backbones import Preprocess
from featkit.store import FeatureStore, GroupMeta


def _v1(tmp_path, *, log: bool = False) -> FeatureStore:
    folder = tmp_path / "features"
    folder.mkdir()
    return FeatureStore(write_store_v1(folder / "v1.h5", log=log))


def _meta() -> GroupMeta:
    pre = Preprocess()
    return GroupMeta(backbone="toy", variant="v1", weights="v1", weights_sha256="ab" * 32, preprocess=pre.to_dict(),
                     preprocess_fingerprint=pre.fingerprint, dim=6, extra={"manifest_hash": "m1"})


def _check_rows(store: FeatureStore, done=DONE) -> None:
    fs = store.load("toy/v1")
    assert fs.ids.dtype.kind == "U" and list(fs.ids) == done
    np.testing.assert_array_equal(fs.X, _feats(done))
    status = store.status("toy/v1")
    assert list(status["ids"]) == IDS and status["failures"] == {IDS[7]: "truncated image: bad"}
    half = store.load("toy/half")
    assert half.X.dtype == np.float16 and list(half.ids) == IDS
    np.testing.assert_allclose(half.X, _feats(IDS), rtol=1e-3)
    coords, attrs = store.read_aux("toy/v1", "umap_2d")
    np.testing.assert_array_equal(coords, np.arange(40, dtype=np.float32).reshape(20, 2))
    assert attrs["n_neighbors"] == 15


def test_a_v1_store_reads_as_before_and_is_left_alone(tmp_path):
    store = _v1(tmp_path)
    original = store.path.read_bytes()
    assert store.keys() == ["toy/half", "toy/v1"]
    _check_rows(store)
    assert Preprocess.from_dict(store.meta("toy/v1")["preprocess"]) == Preprocess()
    groups = store.info()["groups"]
    assert [g["checksummed"] for g in groups] == [False, False]
    assert store.path.read_bytes() == original and store.files() == [store.path]


def test_the_log_of_a_dead_v1_writer_is_replayed(tmp_path):
    store = _v1(tmp_path, log=True)
    _check_rows(store, done=IDS[2:7] + IDS[10:14])
    assert not store.wal_path.exists()


def test_writing_to_a_v1_store_adds_segments_beside_it(tmp_path):
    store = _v1(tmp_path)
    original = store.path.read_bytes()
    with store.writer() as w:
        w.ensure_group(_meta(), IDS)  # the same group: nothing to change
        w.write_rows("toy/v1", IDS[15:16], _feats(IDS[15:16]))
    assert store.path.read_bytes() == original and len(store.files()) == 2
    _check_rows(store, done=DONE + IDS[15:16])


@pytest.mark.parametrize("how", ["verify", "compact"])
def test_v1_is_rewritten_with_checksums_on_request(tmp_path, how):
    store = _v1(tmp_path, log=True)
    report = store.verify()
    assert report["ok"] and report["not_checksummed"] == [str(store.path)]
    if how == "verify":
        report = store.verify(repair=True)
        assert report["repaired"] and report["set_aside"] == []  # nothing was damaged: nothing kept aside
    else:
        store.compact()
    assert store.verify()["not_checksummed"] == [] and store.files() == [store.path]
    with h5py.File(store.path) as f:
        assert f["toy/v1/ids"].dtype.kind == "S" and f["toy/v1/features"].fletcher32
    _check_rows(store, done=IDS[2:7] + IDS[10:14])
