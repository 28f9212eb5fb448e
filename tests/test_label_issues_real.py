"""Label issues on real photos with 5 % of labels flipped on purpose (issue 12.2), asserted loosely.

The defaults as `featkit label-issues` runs them (C by inner CV on the held-out labels'
log-likelihood, ~10 s for both); the table is benchmarks/bench_label_issues.py's, in
benchmarks/README.md. Precision is a lower bound:
the datasets carry label errors of their own. cpac-porcelain's byte-identical copies are flipped
like any row (a flipped copy may be judged by a head that trained on its unflipped twin).
"""

from __future__ import annotations

import pytest

from conftest import embeddings_of
from featkit.explore.label_issues import LabelIssueSettings, label_pair_conflicts, planted_noise

pytestmark = pytest.mark.slow


def test_porcelain_dynasty_flips_are_found_with_the_true_label_suggested(porcelain_store):
    found = planted_noise(embeddings_of(porcelain_store), "dynasty", settings=LabelIssueSettings(gallery=False))
    s = found.summary()
    assert s["flips"] == 86 and s["n"] == 1728 and s["left_out"] == {}
    assert s["precision"] >= 0.7 and s["recall"] >= 0.7 and s["precision_at_k"] >= 0.7  # measured 0.90 / 0.81 / 0.86
    assert s["suggested_true"] >= 0.8
    assert 0.7 * s["flips"] <= s["flagged"] <= 1.6 * s["flips"]  # the estimated noise is about the planted 5 %


def test_clothing_kids_flips_stand_out_although_the_task_is_hard(clothing_store):
    """Frozen MobileNetV2 tells kids' clothes apart poorly: far from perfect, far above the 5 % of chance."""
    found = planted_noise(embeddings_of(clothing_store), "kids", settings=LabelIssueSettings(gallery=False))
    s = found.summary()
    assert s["flips"] == 270 and s["classes"] == 2
    # measured 0.68 / 0.65 / 0.66; C tuned for balanced accuracy instead: 0.23 / 0.83 / 0.31 (it chose large C);
    # with fit's class weights (rebalance auto) precision fell to ~0.2
    assert s["precision"] >= 0.45 and s["recall"] >= 0.5 and s["precision_at_k"] >= 0.5
    assert s["suggested_true"] == 1.0  # binary: the other class is the true one


def test_clothing_label_pairs_find_the_adult_jumpsuit_labelled_body(clothing_store, tmp_path):
    """68 of the 69 'Body' photos are kids' clothes; the one with kids=False is an adult jumpsuit."""
    frame = label_pair_conflicts(embeddings_of(clothing_store), out=tmp_path).frame
    first = frame.iloc[0]
    assert (first["label_a"], first["label_b"], first["support"]) == ("Body", "False", 0)
    assert first["id"] == "images/f4106e52-0286-4971-975c-8ba4c060ba71.jpg" and first["usual_b_for_a"] == "True"
    assert len(frame) <= 10  # only pairs nothing outside their photographer shows
