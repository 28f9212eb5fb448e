"""Nothing lost on a crash (issue 2, item 8): kill -9 `featkit extract` on real images, resume, compare.

150 real porcelain photographs are extracted once without interruption (the reference)
and once by a sequence of `featkit extract` processes that are each killed with SIGKILL:
right at startup, mid-run after a seeded random number of logged batches (so the kills
land mid-run on a machine of any speed), and while the store's log is being folded into
a segment or the base (a checkpoint). After every kill the store must open, every row
it calls done must equal the reference, and no done row may disappear; a last run
resumes and the final features must equal the reference.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import dataset_dir
from featkit.config import Config
from featkit.data import load_manifest
from featkit.extract import ExtractSettings
from featkit.api import Collection
from featkit.store import FeatureStore, _iter_wal

N_IMAGES = 150
SEED = 20261122
KEY = "mobilenet_v2/imagenet1k_v1"
EXTRACT = [sys.executable, "-m", "featkit_cli.main", "extract", "--fp32", "--workers", "0", "--batch-size", "8",
           "--json"]
# fp32 on the CPU: a row can differ from the reference only at float32 rounding level, when it ended up in
# a batch of another size or composition after a resume (oneDNN picks convolution kernels by batch shape)
TOL = {"rtol": 1e-4, "atol": 1e-5}


def _collection(root: Path, source: Path) -> Config:
    with open(source / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(SEED)
    picked = sorted(rng.choice(len(rows), N_IMAGES, replace=False))  # all dynasties, fixed
    root.mkdir(parents=True)
    (root / "images").symlink_to(source / "images")
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "dynasty"])
        writer.writerows([rows[i]["image"], rows[i]["dynasty"]] for i in picked)
    config = Config(root=root, name="porcelain", manifest=Path("labels.csv"), tasks=("dynasty",))
    config.write()
    return config


def _copy_store(store: FeatureStore, folder: Path) -> FeatureStore:
    """The base, its segments and its log as a killed writer left them, in another folder."""
    import shutil

    for path in store.files():
        target = folder / path.relative_to(store.path.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return FeatureStore(folder / store.path.name)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0, poll: float = 0.002) -> bool:
    """Poll ``condition`` until it holds (True) or the process ends or time runs out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if condition():
            return True
        time.sleep(poll)
    return False


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILL the run and anything it started; False if it had already finished."""
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tmp_path):
    source = dataset_dir("cpac-porcelain")
    reference_cfg = _collection(tmp_path / "reference", source)
    crash_cfg = _collection(tmp_path / "crash", source)
    ids = load_manifest(crash_cfg).ids

    summary = Collection(reference_cfg).extract_summary("mobilenet_v2",
                                 settings=ExtractSettings(progress=False, workers=0, batch_size=8, precision="fp32"))
    assert summary.computed == N_IMAGES and summary.failed == 0
    reference = FeatureStore(reference_cfg.store_path).load(KEY)
    ref_rows = dict(zip(reference.ids, reference.X))

    store = FeatureStore(crash_cfg.store_path)
    rng = np.random.default_rng(SEED)

    def in_checkpoint() -> bool:
        """A segment or a new base is being written (under .<name>.<pid>.tmp)."""
        return any(name.endswith(".tmp") for _, _, names in os.walk(store.path.parent) for name in names)

    def logging_rows(batches: int):
        """Holds once this run has logged ``batches`` batches of rows: mid-run on a machine of any speed."""
        def condition() -> bool:
            return sum(record.header["type"] == "rows" for record in _iter_wal(store.wal_path)) >= batches
        return condition

    plan = [  # (what, wait for, delay after it)
        ("at startup", None, rng.uniform(0.05, 0.5)),
        ("mid-run", logging_rows(int(rng.integers(1, 5))), rng.uniform(0.0, 0.05)),
        ("mid-run", logging_rows(int(rng.integers(1, 5))), rng.uniform(0.0, 0.05)),
        ("in a checkpoint", in_checkpoint, 0.0),  # the run starts by folding in the log the last one left
    ]
    done_before: set[str] = set()
    killed = []
    for what, condition, delay in plan:
        proc = subprocess.Popen(EXTRACT, cwd=crash_cfg.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            reached = condition is None or _wait_for(condition, proc, poll=0.0005 if condition is in_checkpoint else 0.01)
            if reached and delay:
                time.sleep(delay)
            was_killed = reached and _kill(proc)
        finally:
            if proc.poll() is None:
                _kill(proc)
        killed.append((what, was_killed))
        if not was_killed:
            assert proc.returncode == 0, proc.stderr.read().decode()
        # the store opens, holds only correct rows, and never loses one it had. Read a copy, so the
        # log the killed run left stays for the next run to replay as it starts (a checkpoint to kill)
        view = _copy_store(store, tmp_path / f"view-{len(killed)}" / "features")
        keys = view.keys()
        assert keys in ([], [KEY]), keys
        if keys:
            now = view.load(KEY)
            for image_id, row in zip(now.ids, now.X):
                np.testing.assert_allclose(row, ref_rows[image_id], **TOL, err_msg=f"{image_id} after kill {what}")
            assert done_before <= set(now.ids), f"rows lost after kill {what}"
            done_before = set(now.ids)

    assert killed[:3] == [("at startup", True), ("mid-run", True), ("mid-run", True)], killed
    # (a checkpoint lasts milliseconds: on a very fast machine the run may get past it first)

    final = subprocess.run(EXTRACT, cwd=crash_cfg.root, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    result = json.loads(final.stdout)
    assert result["already_done"] == len(done_before)
    assert result["computed"] == N_IMAGES - len(done_before)
    assert (result["failed"], result["remaining"]) == (0, 0)

    resumed = store.load(KEY)
    assert list(resumed.ids) == list(ids) == list(reference.ids)
    np.testing.assert_allclose(resumed.X, reference.X, **TOL)
    assert not store.wal_path.exists() and not list(store.path.parent.rglob("*.tmp"))
    print("kills:", killed, "rows done before the last run:", len(done_before))
