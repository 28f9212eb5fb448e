"""Exploration on the real shared datasets (slow; skipped when ../shared/datasets is absent)."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import embeddings_of
from featkit.api import Collection
from featkit.explore.duplicates import DuplicateSettings, find_duplicates
from featkit.explore.separability import SeparabilitySettings, separability

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("threshold,min_precision", [(0.97, 0.9), (0.99, 1.0)])
def test_porcelain_val_rows_that_duplicate_train_rows_are_found(porcelain_store, tmp_path, threshold, min_precision):
    """cpac-porcelain marks 46 val rows byte-identical to a train row (its duplicate_of column)."""
    config, key = porcelain_store

    frame = pd.read_csv(config.manifest_path, dtype=str, keep_default_na=False)
    split = dict(zip(frame["image"], frame["source_split"]))
    truth = {row.image for row in frame.itertuples() if row.source_split == "val" and row.duplicate_of
             and split.get(row.duplicate_of) == "train"}
    assert len(truth) == 46
    report = find_duplicates(embeddings_of(porcelain_store), settings=DuplicateSettings(threshold=threshold),
                             out=tmp_path)
    leaks = report.leaks
    assert (leaks["leak_reason"] == "split").all()  # no group column here: only the split can leak
    flagged = report.leaked_ids("val")
    recall = len(flagged & truth) / len(truth)
    precision = len(flagged & truth) / len(flagged)
    print(f"threshold {threshold}: {len(report.pairs)} pairs, {len(leaks)} leaking; val rows flagged "
          f"{len(flagged)}, recall {recall:.3f}, precision {precision:.3f}")
    assert recall == 1.0 and precision >= min_precision
    # every byte-identical pair (train-train too) is found, at similarity ~1
    pairs = {frozenset(p) for p in zip(report.pairs["id_a"], report.pairs["id_b"])}
    marked = [frozenset((row.image, row.duplicate_of)) for row in frame.itertuples() if row.duplicate_of]
    assert all(p in pairs for p in marked)


def test_clothing_separability_is_group_aware_and_above_chance(clothing_store):
    """Photos by one sender share a background: leaving the sender out is the honest k-NN."""
    config, key = clothing_store
    grouped = separability([embeddings_of(clothing_store)], tasks="label",
                           settings=SeparabilitySettings(max_points=3000))
    ungrouped = separability([Collection(config.replace(group="")).embeddings(key=key)], tasks="label",
                             settings=SeparabilitySettings(max_points=3000))
    g, u = grouped.rows[0], ungrouped.rows[0]
    print(f"clothing label: kNN balanced accuracy {g['knn_balanced_accuracy']:.3f} leaving the sender out, "
          f"{u['knn_balanced_accuracy']:.3f} ignoring senders; chance {g['chance_balanced_accuracy']:.3f}")
    assert g["group_aware"] and not u["group_aware"]
    assert g["knn_balanced_accuracy"] > 3 * g["chance_balanced_accuracy"]
    assert u["knn_balanced_accuracy"] >= g["knn_balanced_accuracy"]  # the same sender's photos flatter k-NN
