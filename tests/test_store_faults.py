"""Damaged files and failing disks (issue 11, items 2 and 3): a clear one-line error, never wrong numbers,
no temporary file left behind, nothing already computed lost; `featkit verify` finds and sets aside damage.

Small generated stores here; the same faults on a store of real porcelain photographs
embedded by MobileNetV2, driven through the CLI, in test_store_real_faults.py. Real
read-only and full disks use a bind mount and a tmpfs when this process may mount (root in
a container); the same paths are also driven by simulated EROFS/ENOSPC, which always run.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import featkit.store as store_module
from featkit_cli.main import app
from featkit.errors import FeatkitError
from featkit.store import CHUNK_ROWS, FeatureStore
from test_store import KEY, _feats, _files, _meta

N, DIM = 600, 16  # three 256-row chunks
IDS = [f"img/{i:03d}.jpg" for i in range(N)]


def _store(tmp_path, *, segment: bool = False) -> FeatureStore:
    """600 done rows in the base; with ``segment``, 20 more rows in a segment beside it."""
    store = FeatureStore(tmp_path / "features" / "s.h5")
    with store.writer() as w:
        w.ensure_group(_meta(dim=DIM), IDS + [f"img/{i}.jpg" for i in range(600, 620)])
        w.write_rows(KEY, IDS, _feats(IDS, DIM))
    store.compact()
    if segment:
        extra = [f"img/{i}.jpg" for i in range(600, 620)]
        with store.writer() as w:
            w.write_rows(KEY, extra, _feats(extra, DIM))
        assert len(store.files()) == 2
    return store


def _flip(path: Path, dataset: str, chunk: int, n: int = 64) -> None:
    """Flip bits in ``n`` bytes near the start of one stored chunk of ``dataset`` (inside its first rows).

    XOR 0x5A, not 0xFF: fletcher32 sums 16-bit words modulo 65535, so a zero word turned into
    0xFFFF is the one change it cannot see (a single flipped bit it always sees).
    """
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        data = fh.read(n)
        fh.seek(info.byte_offset + 8)
        fh.write(bytes(b ^ 0x5A for b in data))


def _leftovers(store: FeatureStore) -> list[Path]:
    return [p for p in store.path.parent.rglob("*") if p.name.endswith(".tmp") or p == store.wal_path]


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount here ({result.stderr.strip()}); the simulated variant covers this")


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", str(point)], check=False)


# -- damaged bytes ----------------------------------------------------------------------
def test_flipped_feature_bytes_are_an_error_naming_the_images(tmp_path):
    store = _store(tmp_path)
    _flip(store.path, f"{KEY}/features", 1)  # rows 256-511
    with pytest.raises(FeatkitError) as err:
        store.load(KEY)
    message = str(err.value)
    assert f"{store.path} is damaged" in message and "features rows 256-511 of toy/v1" in message
    assert "256 image(s) affected: 'img/256.jpg'" in message and "`featkit verify`" in message
    assert "\n" not in message
    fine = store.load(KEY, ids=IDS[:256] + IDS[512:])  # rows in whole chunks still read
    np.testing.assert_array_equal(fine.X, _feats(IDS[:256] + IDS[512:], DIM))
    assert store.status(KEY)["done"].sum() == N  # ids and done flags are intact


def test_verify_finds_the_damage_and_repair_keeps_every_readable_row(tmp_path):
    store = _store(tmp_path, segment=True)
    segment = store.files()[1]
    _flip(store.path, f"{KEY}/features", 2)  # base rows 512-619 (600-619 pending there, done in the segment)
    _flip(segment, "ids", 0)  # the segment's ids: its rows cannot be named
    before = _files(store)
    report = store.verify()
    assert not report["ok"] and not report["repaired"] and _files(store) == before  # checking changes nothing
    found = {(p["file"], p["what"]) for p in report["problems"]}
    assert found == {(str(store.path), "features rows 512-619"), (str(segment), "ids rows 0-19")}
    extra = [f"img/{i}.jpg" for i in range(600, 620)]
    assert report["recompute"] == {KEY: IDS[512:] + extra}  # the ids it can name
    assert report["files"] == 2 and report["bytes"] > N * DIM * 4

    report = store.verify(repair=True)
    assert report["repaired"] and len(report["set_aside"]) == 2
    assert report["recompute"] == {KEY: IDS[512:] + extra}
    kept = sorted(store.damaged_dir.iterdir())
    assert [p.read_bytes() for p in kept] == [before["s.h5"][0], before[str(segment.relative_to(store.path.parent))][0]]
    assert store.verify()["ok"]
    status = store.status(KEY)
    done = set(status["ids"][status["done"]])
    assert done == set(IDS[:512])  # the damaged base rows, and the segment's unnamed rows, are to be recomputed
    np.testing.assert_array_equal(store.load(KEY).X, _feats(IDS[:512], DIM))
    # what `featkit extract` then does: add the ids back (the segment's were lost), compute what is not done
    everything = IDS + extra
    with store.writer() as w:
        w.ensure_group(_meta(dim=DIM), everything)
        todo = [i for i in everything if i not in done]
        w.write_rows(KEY, todo, _feats(todo, DIM))
    np.testing.assert_array_equal(store.load(KEY).X, _feats(everything, DIM))


def test_a_truncated_base_is_a_clear_error_and_verify_sets_it_aside(tmp_path):
    store = _store(tmp_path, segment=True)
    size = store.path.stat().st_size
    with open(store.path, "r+b") as fh:
        fh.truncate(size // 2)
    for read in (store.keys, store.info, lambda: store.load(KEY)):
        with pytest.raises(FeatkitError, match=rf"{store.path} is damaged: the file cannot be read .*`featkit verify`"):
            read()
    with pytest.raises(FeatkitError, match="is damaged"):
        with store.writer() as w:
            w.ensure_group(_meta(dim=DIM), IDS)
    assert _leftovers(store) == []  # no log, no temporary file
    report = store.verify(repair=True)
    assert [p["what"] for p in report["problems"]] == ["the file"] and len(report["set_aside"]) == 1
    assert Path(report["set_aside"][0]).stat().st_size == size // 2
    assert list(store.load(KEY).ids) == [f"img/{i}.jpg" for i in range(600, 620)]  # the segment's rows remain


def test_a_truncated_segment_is_set_aside(tmp_path):
    store = _store(tmp_path, segment=True)
    segment = store.files()[1]
    with open(segment, "r+b") as fh:
        fh.truncate(500)
    with pytest.raises(FeatkitError, match=rf"{segment} is damaged: the file of toy/v1 cannot be read"):
        store.load(KEY)
    report = store.verify(repair=True)
    assert report["problems"][0]["file"] == str(segment) and not segment.exists()
    np.testing.assert_array_equal(store.load(KEY).X, _feats(IDS, DIM))


# -- read-only folders -------------------------------------------------------------------
def _refused_but_readable(store: FeatureStore, folder: Path) -> None:
    with pytest.raises(FeatkitError, match=rf"store folder {folder} is read-only: .*Reading works"):
        with store.writer():
            pass
    np.testing.assert_array_equal(store.load(KEY).X, _feats(IDS, DIM))
    assert store.info()["groups"][0]["done"] == N and store.verify()["ok"]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_folder_simulated(tmp_path, monkeypatch, code):
    store = _store(tmp_path)
    store.wal_path.write_bytes(b"")  # a dead writer's empty log: readers cannot replay it, and need not

    class ReadOnlyLock:
        def __init__(self, path):
            self.path = path

        def acquire(self, timeout=None):
            raise OSError(code, os.strerror(code), str(self.path))

    monkeypatch.setattr(store_module, "FileLock", ReadOnlyLock)
    _refused_but_readable(store, store.path.parent)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; the bind mount and simulated tests cover it")
def test_read_only_folder_chmod(tmp_path):
    store = _store(tmp_path)
    folder = store.path.parent
    folder.chmod(0o555)
    try:
        _refused_but_readable(store, folder)
    finally:
        folder.chmod(0o755)


def test_read_only_mount(tmp_path, mounts):
    store = _store(tmp_path)
    view = tmp_path / "ro"
    view.mkdir()
    _mount("--bind", str(store.path.parent), str(view))
    mounts.append(view)
    _mount("-o", "remount,bind,ro", str(view))
    ro = FeatureStore(view / "s.h5")
    _refused_but_readable(ro, view)
    result = CliRunner().invoke(app, ["verify", "--store", str(ro.path)])
    assert result.exit_code == 2 and "is read-only" in result.output and "Traceback" not in result.output
    assert CliRunner().invoke(app, ["verify", "--check-only", "--store", str(ro.path)]).exit_code == 0


# -- full disks ---------------------------------------------------------------------------
def test_full_disk_while_logging_keeps_what_was_logged(tmp_path, monkeypatch):
    store = _store(tmp_path)
    extra = [f"img/{i}.jpg" for i in range(600, 620)]
    real_write = os.write
    budget = [2 * (len(store_module._rows_record(KEY, store_module._as_bytes(extra[:5]),
                                                   _feats(extra[:5], DIM), []))) + 100]

    def write(fd, data):  # the third batch fills the disk halfway through its record
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(".wal"):
            return real_write(fd, data)
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[: budget[0]]))
        budget[0] -= n
        return n

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=0, f_frsize=4096))
    with pytest.raises(FeatkitError) as err:
        with store.writer() as w:
            for start in range(0, 20, 5):
                w.write_rows(KEY, extra[start : start + 5], _feats(extra[start : start + 5], DIM))
    message = str(err.value)
    assert message.startswith(f"no space left on the disk of {store.path.parent} while logging a batch of 5 rows")
    assert f"free some space, then rerun: what was logged before it is kept in {store.wal_path}" in message
    assert [len(r.ids) for r in store_module._iter_wal(store.wal_path)] == [5, 5]  # no torn record
    assert not list(store.path.parent.rglob("*.tmp"))
    monkeypatch.undo()
    with store.writer():  # space again: the next run folds the logged rows in
        pass
    assert list(store.load(KEY).ids) == IDS + extra[:10] and not _leftovers(store)


def test_full_disk_on_the_first_batch_leaves_no_empty_log(tmp_path, monkeypatch):
    store = _store(tmp_path)
    real_write = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".wal"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(FeatkitError, match="no space left"):
        with store.writer() as w:
            w.write_rows(KEY, IDS[:1], _feats(IDS[:1], DIM))
    assert _leftovers(store) == []


def test_full_disk_while_checkpointing_keeps_the_log(tmp_path, monkeypatch):
    store = _store(tmp_path)
    extra = [f"img/{i}.jpg" for i in range(600, 620)]
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=10, f_frsize=4096))
    with pytest.raises(FeatkitError) as err:
        with store.writer() as w:
            w.write_rows(KEY, extra, _feats(extra, DIM))  # the checkpoint on leaving cannot fit
    assert str(err.value).startswith(f"no space left on the disk of {store.path.parent}: checkpointing toy/v1 needs")
    assert f"is free; free some space, then rerun: the 20 logged rows are kept in {store.wal_path}" in str(err.value)
    assert store.wal_path.exists() and not list(store.path.parent.rglob("*.tmp"))
    monkeypatch.undo()
    assert list(store.load(KEY).ids) == IDS + extra  # the next reader or writer folds it in


def test_a_write_error_inside_hdf5_removes_the_temporary_file(tmp_path, monkeypatch):
    """The space check can race with another process filling the disk: HDF5 then fails mid-write."""
    store = _store(tmp_path)
    real = store_module._h5_new

    def failing(path):
        f = real(path)
        f.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    with store.writer() as w:
        w.write_rows(KEY, IDS[:3], _feats(IDS[:3], DIM) + 1)
        monkeypatch.setattr(store_module, "_h5_new", failing)
        with pytest.raises(FeatkitError, match="no space left on the disk of .* while checkpointing toy/v1"):
            w.checkpoint()
        assert store.wal_path.exists() and not list(store.path.parent.rglob("*.tmp"))
        monkeypatch.undo()
    np.testing.assert_array_equal(store.load(KEY, ids=IDS[:3]).X, _feats(IDS[:3], DIM) + 1)


def test_space_estimate_bounds(tmp_path, monkeypatch):
    """Each file is checked against free space before HDF5 writes it; the estimate must never fall short."""
    needs, sizes = [], []
    check, replace = store_module._check_space, os.replace

    def recording_check(folder, need, doing, then):
        needs.append(need)
        return check(folder, need, doing, then)

    def recording_replace(src, dst):
        sizes.append(os.path.getsize(src))
        return replace(src, dst)

    monkeypatch.setattr(store_module, "_check_space", recording_check)
    monkeypatch.setattr(os, "replace", recording_replace)
    store = FeatureStore(tmp_path / "s.h5")
    ids = [f"images/some/longer/folder/{i:07d}.jpg" for i in range(60_000)]
    with store.writer() as w:
        w.ensure_group(_meta(dim=300, dtype="float16"), ids)  # ids only: their bytes plus a done flag each
        sparse = ids[::300]  # one done row per chunk: whole chunks are allocated
        w.write_rows(KEY, sparse, np.ones((len(sparse), 300), np.float32),
                     failures=[(ids[1], "x" * 500), (ids[2], "not an image")])
        w.write_aux(KEY, "umap_2d", np.ones((60_000, 2)))
    store.compact()
    assert len(needs) == len(sizes) >= 4
    assert all(size <= need for need, size in zip(needs, sizes)), list(zip(needs, sizes))


def test_a_real_full_disk(tmp_path, mounts):
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk))
    mounts.append(disk)
    store = FeatureStore(disk / "s.h5")
    ids = [f"img/{i:05d}.jpg" for i in range(4000)]
    logged = 0
    with pytest.raises(FeatkitError) as err:
        with store.writer() as w:
            w.ensure_group(_meta(dim=1024), ids)
            for start in range(0, len(ids), 100):  # 16 MiB of rows
                w.write_rows(KEY, ids[start : start + 100], _feats(ids[start : start + 100], 1024))
                logged += 100
    assert str(err.value).startswith(f"no space left on the disk of {disk} while logging a batch of 100 rows")
    assert "\n" not in str(err.value) and 0 < logged < len(ids)
    assert sum(len(r.ids) for r in store_module._iter_wal(store.wal_path) if r.header["type"] == "rows") == logged
    assert not list(disk.rglob("*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    fs = store.load(KEY)
    assert list(fs.ids) == ids[:logged] and not _leftovers(store)
    np.testing.assert_array_equal(fs.X, _feats(ids[:logged], 1024))


# -- featkit verify ----------------------------------------------------------------------
def test_verify_command(tmp_path):
    store = _store(tmp_path)
    runner = CliRunner()
    whole = runner.invoke(app, ["verify", "--store", str(store.path)])
    assert whole.exit_code == 0 and "every byte" in whole.output
    _flip(store.path, f"{KEY}/features", 0)
    check = runner.invoke(app, ["verify", "--check-only", "--json", "--store", str(store.path)])
    assert check.exit_code == 1
    report = json.loads(check.output)
    assert not report["ok"] and report["recompute"] == {KEY: IDS[:CHUNK_ROWS]} and not report["repaired"]
    fixed = runner.invoke(app, ["verify", "--store", str(store.path)])
    assert fixed.exit_code == 1 and "set aside" in fixed.output and "featkit extract" in fixed.output
    assert "256" in fixed.output and "Traceback" not in fixed.output
    assert runner.invoke(app, ["verify", "--store", str(store.path)]).exit_code == 0
    missing = runner.invoke(app, ["verify", "--store", str(tmp_path / "none.h5")])
    assert missing.exit_code == 2 and "no feature store" in missing.output
