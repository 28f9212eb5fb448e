"""Memory stays flat (issue 6, item 3): extraction never holds the features it writes.

A tiny network with a 8192-wide embedding makes every row as large as four ResNet50
rows, so holding the features would be visible: tracemalloc (which sees every numpy
array and Python bytes object, including the write-ahead log records and the
checkpoint's replay) must peak well below the features' total size. The RSS
benchmark for 1k vs 20k images is benchmarks/bench_memory.py.
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_memory import make_images, wide_backbone, write_collection  # noqa: E402
from featkit.data import load_manifest  # noqa: E402
from featkit.extract import ExtractSettings, extract  # noqa: E402
from featkit.store import FeatureStore  # noqa: E402

N, DIM = 1000, 8192


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    return write_collection(root, make_images(root / "images", N, size=32))


def test_extraction_never_holds_the_features_it_writes(wide):
    store = FeatureStore(wide.store_path)
    collection = load_manifest(wide)
    backbone = wide_backbone(DIM)
    settings = ExtractSettings(batch_size=32, workers=0, device="cpu", precision="fp32", progress=False,
                               checkpoint_seconds=0.5)  # several checkpoints replay the log mid-run
    tracemalloc.start()
    try:
        summary = extract(collection, backbone, store=store, settings=settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = N * DIM * 4  # 31 MiB of features; a writer that kept them peaks above it (measured: 6.5 MiB without)
    assert summary.computed == N and summary.remaining == 0
    assert peak < total / 3, f"extraction peaked at {peak / 2**20:.1f} MiB of Python/numpy memory"
    X = store.load(summary.key).X
    assert X.shape == (N, DIM) and X.dtype == np.float32 and (X.sum(1) > 0).all()


def test_float16_stores_load_as_float16_and_say_what_they_need(wide, tmp_path):
    store = FeatureStore(tmp_path / "half.h5")
    summary = extract(load_manifest(wide), wide_backbone(DIM), store=store,
                      settings=ExtractSettings(batch_size=64, workers=0, device="cpu", precision="fp32",
                                               progress=False, storage_dtype="float16", limit=100))
    assert store.memory_needed(summary.key) == 100 * DIM * 2
    assert store.memory_needed(summary.key, dtype=np.float32) == 100 * DIM * 4
    some = list(load_manifest(wide).ids[:10]) + ["images/not_there.jpg"]
    assert store.memory_needed(summary.key, ids=some) == 10 * DIM * 2
    fs = store.load(summary.key)
    assert fs.X.dtype == np.float16 and fs.X.nbytes == store.memory_needed(summary.key)
