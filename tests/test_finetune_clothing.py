"""Fine-tuning on real photos: a small clothing subset (label + kids, grouped by sender_id).

The full comparison is benchmarks/bench_finetune.py; this runs its code at a size CI
can afford and prints frozen-probe vs fine-tuned balanced accuracy.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from featkit.backbones.weights import file_sha256
from featkit.data import load_manifest
from featkit.evaluate import EvalSettings
from featkit.extract import ExtractSettings
from featkit.finetune import FinetuneSettings, finetune, run_paths
from featkit.finetune.probe import probe_comparison
from featkit.finetune.splits import Split
from featkit.store import FeatureStore

from conftest import REPO, dataset_dir


def _bench():
    spec = importlib.util.spec_from_file_location("bench_finetune", REPO / "benchmarks" / "bench_finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_clothing_finetune_against_frozen_probe(tmp_path, capsys):
    source = dataset_dir("clothing")
    config = _bench().subset_collection(tmp_path, "clothing", max_images=240, seed=1, source_dir=source)
    collection = load_manifest(config)
    settings = FinetuneSettings(tasks=("label", "kids"), run="ci", epochs=2, image_size=96, train_blocks=3,
                                class_weights="balanced", warmup_epochs=0, patience=0, workers=0, progress=False)
    result = finetune(config, collection, settings=settings)

    split = Split.load(run_paths(config, "ci").split, collection)
    senders = [set(collection.groups[getattr(split, part)]) for part in ("train", "val", "test")]
    assert not senders[0] & senders[2] and not senders[1] & senders[2] and not senders[0] & senders[1]
    history = json.loads(run_paths(config, "ci").history.read_text())
    assert [h["epoch"] for h in history] == [1, 2]

    comparison = probe_comparison(config, collection, "ci", eval_settings=EvalSettings(params={"C": (0.01,)}),
                                  settings=ExtractSettings(progress=False, workers=0))
    store = FeatureStore(config.store_path)
    tuned_key = comparison["keys"]["finetuned"]
    assert store.meta(tuned_key)["weights_sha256"] == file_sha256(run_paths(config, "ci").trunk)
    same_size = store.load(comparison["keys"]["frozen_same_size"])
    tuned = store.load(tuned_key)
    assert list(same_size.ids) == list(tuned.ids) and not np.allclose(same_size.X, tuned.X, atol=1e-3)
    for task, row in comparison["tasks"].items():
        assert set(row) == {"frozen_probe", "frozen_same_size_probe", "finetuned_probe", "finetuned_heads"}
        assert all(0.0 <= v <= 1.0 for v in row.values()), row
        assert row["finetuned_heads"] == next(
            r["metrics"]["balanced_accuracy"] for r in result.report["tasks"] if r["task"] == task)
    with capsys.disabled():
        print("\nclothing subset, held-out balanced accuracy:",
              json.dumps({t: {k: round(v, 3) for k, v in r.items()} for t, r in comparison["tasks"].items()}))
