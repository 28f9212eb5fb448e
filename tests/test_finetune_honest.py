"""Honest numbers after fine-tuning (issue 12, item 1): a fine-tuned trunk's own training images are never
scored as held out — not by fit, separability, rank or label issues on its variant."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import featkit as fk
from featkit.explore.rank import rank_backbones
from featkit.explore.separability import separability


@pytest.fixture(scope="module")
def tuned(demo_config, tmp_path_factory):
    """The demo collection (own folder), fine-tuned briefly on glaze; its trunk cached as a store variant."""
    root = tmp_path_factory.mktemp("honest")
    shutil.copytree(demo_config.root, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("features", "runs"))
    col = fk.open(root)
    result = col.finetune(("glaze",), run="g", epochs=1, batch_size=16, image_size=64, train_blocks=1,
                          steps_per_epoch=2, progress=False, workers=0)
    split = json.loads((col.config.finetune_run_dir("g") / "split.json").read_text())
    assert result.report["corrections"]["applied"] == 0 and not result.report["corrections"]["ignored"]
    emb = col.extract("mobilenet_v2", variant=result.report["variant"], progress=False, workers=0)
    frozen = col.extract("mobilenet_v2", progress=False, workers=0)
    return col, emb, frozen, split


def test_fit_on_the_finetuned_variant_scores_only_images_the_trunk_never_saw(tuned):
    col, emb, frozen, split = tuned
    seen = set(split["train"]) | set(split["val"])
    assert emb.key == "mobilenet_v2/finetuned-g" and len(emb) == 80
    res = emb.fit("glaze", "logreg", cv=2, params={"C": (0.1,)}, plot=False)
    rows = res.report["rows"]
    assert rows["excluded_trunk_training"] == len(seen)
    assert rows["used"] + rows.get("dropped_rare", 0) == 80 - len(seen) == len(split["test"])
    assert res.report["n_test"] == rows["used"]  # folds over the held-out images only
    assert set(res.predictions["id"]) <= set(split["test"])  # no trained-on image was scored as held out
    assert any("fine-tuned trunk" in w for w in res.report["warnings"])
    run = res.save()
    assert "left out (the fine-tuned trunk trained on them)" in (run / "report.md").read_text()
    # the frozen ImageNet embedding evaluates every image: nothing to leave out
    plain = frozen.fit("glaze", "logreg", cv=2, params={"C": (0.1,)}, plot=False)
    assert "excluded_trunk_training" not in plain.report["rows"] and plain.report["n_test"] == 80


def test_separability_rank_and_label_issues_use_the_same_rule(tuned):
    col, emb, frozen, split = tuned
    held_out = 80 - len(set(split["train"]) | set(split["val"]))
    rows = {r["key"]: r for r in separability([emb, frozen], tasks="glaze").rows}
    assert rows[emb.key]["n"] == held_out and rows[frozen.key]["n"] == 80
    ranked = {r["key"]: r for r in rank_backbones([emb, frozen], tasks="glaze").rows}
    assert ranked[emb.key]["n"] == held_out and ranked[frozen.key]["n"] == 80
    data = emb.task("glaze")
    assert np.isin(data.ids, split["test"]).all()
