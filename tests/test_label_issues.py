"""Label issues on generated embeddings (issue 12.2): only learnable classes are judged or suggested, the
suggestion is the most probable other class, a gallery is drawn, and label pairs two tasks disagree on are
listed. The real-data check with planted flips is in test_label_issues_real.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featkit.data.manifest import Manifest
from featkit.embeddings import Embeddings
from featkit.errors import FeatkitError
from featkit.explore.label_issues import (LabelIssueSettings, PairSettings, confident_learning, find_label_issues,
                                          label_pair_conflicts, pair_conflicts)

SHAPES = ["cup", "jar", "plate", "vase"]


def toy_embeddings(root: Path, *, seed: int = 0, n_groups: int = 60, flips: int = 6, tiny: int = 3):
    """Four shape clusters, two photos per object (group), plus a ``tiny`` class of single-object images.

    Both photos of ``flips`` objects get another shape. A second task, ``colour``, follows the shape
    (cup->white, jar->blue, plate->white, vase->green); images are written so the gallery has pixels.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(SHAPES), 32)) * 3
    shape = np.repeat(np.arange(len(SHAPES)), n_groups // len(SHAPES) * 2)
    groups = np.repeat([f"obj{i:03d}" for i in range(len(shape) // 2)], 2)
    X = centres[shape] + rng.normal(size=(len(shape), 32))
    given = np.array(SHAPES, dtype=object)[shape]
    flipped_objects = rng.choice(len(shape) // 2, size=flips, replace=False)
    flipped = np.flatnonzero(np.isin(np.arange(len(shape)) // 2, flipped_objects))
    for obj in flipped_objects:
        given[2 * obj: 2 * obj + 2] = SHAPES[(shape[2 * obj] + 1 + obj % 3) % len(SHAPES)]
    X = np.vstack([X, rng.normal(size=(tiny, 32)) * 3])  # the tiny class: its own object, too few for 5 folds
    given = np.concatenate([given, np.array(["shard"] * tiny, dtype=object)])
    groups = np.concatenate([groups, np.array(["obj-shard"] * tiny, dtype=object)])
    colour_of = {"cup": "white", "jar": "blue", "plate": "white", "vase": "green", "shard": "white"}
    colour = np.array([colour_of[s] for s in given], dtype=object)
    ids = np.array([f"images/{i:04d}.png" for i in range(len(given))])
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(ids):
        Image.new("RGB", (24, 24), (40 * (i % 6), 90, 200)).save(root / image_id)
    manifest = Manifest(name="toy", root=root, ids=ids, labels={"shape": given, "colour": colour},
                        groups=groups.astype(object))
    emb = Embeddings(key="toy/plain", ids=ids, X=X.astype(np.float32), manifest=manifest, rows=np.arange(len(ids)))
    return emb, flipped, np.array(SHAPES, dtype=object)[shape]


# -- confident learning on given probabilities ------------------------------------------------------------------
def test_flagged_count_is_the_confident_joint_and_the_suggestion_the_best_other_class():
    classes = ["a", "b", "c"]
    true = np.repeat([0, 1, 2], 30)
    proba = np.full((90, 3), 0.05)
    proba[np.arange(90), true] = 0.9
    proba += np.random.default_rng(0).uniform(0, 0.02, proba.shape)
    proba[5] = [0.40, 0.35, 0.25]  # labelled a, unsure: a's threshold (~0.88) is not reached, b's is not either
    proba /= proba.sum(1, keepdims=True)
    given = np.array(classes, dtype=object)[true]
    given[[3, 40, 77]] = ["c", "c", "b"]  # true a, b, c
    result = confident_learning(proba, given, classes)
    assert sorted(result.issues["position"]) == [3, 40, 77]  # row 5 is not confidently anything else
    assert result.noise_rate == pytest.approx(3 / 90)
    assert np.trace(result.confident_joint) + 3 == result.confident_joint.sum()
    assert list(result.issues["suggested"]) == [classes[true[p]] for p in result.issues["position"]]
    p_given = proba[result.issues["position"], [classes.index(g) for g in result.issues["given"]]]
    np.testing.assert_allclose(result.issues["self_confidence"], p_given.round(4))
    assert list(result.issues["self_confidence"]) == sorted(result.issues["self_confidence"])  # lowest first


def test_the_suggestion_is_the_most_probable_other_class_even_below_its_threshold():
    """cleanlab's confident label can be a class other than the most probable one; featkit suggests the latter."""
    classes = ["a", "b", "c"]
    proba = np.tile([0.9, 0.05, 0.05], (60, 1))
    proba[20:40] = [0.05, 0.9, 0.05]
    proba[40:] = [0.05, 0.05, 0.9]
    proba[0] = [0.02, 0.50, 0.48]  # labelled a; c reaches its lower threshold, b does not
    proba[40:60, 2] = 0.45  # c's own images are less sure: its threshold drops to ~0.45
    proba[40:60, 0] = 0.5
    given = np.array(["a"] * 20 + ["b"] * 20 + ["c"] * 20, dtype=object)
    result = confident_learning(proba, given, classes)
    row = result.issues.set_index("position").loc[0]
    assert row["suggested"] == "b" and row["suggested_confidence"] == pytest.approx(0.5)


def test_ranking_choices_are_checked():
    with pytest.raises(FeatkitError, match="valid choices"):
        LabelIssueSettings(rank_by="loss").validate()
    with pytest.raises(FeatkitError, match="not among the classes"):
        confident_learning(np.full((4, 2), 0.5), np.array(["a", "a", "b", "z"], dtype=object), ["a", "b"])


# -- find_label_issues on embeddings -----------------------------------------------------------------------------
def test_flipped_objects_are_found_and_a_too_small_class_is_left_out(tmp_path):
    emb, flipped, true = toy_embeddings(tmp_path)
    report = find_label_issues(emb, "shape", settings=LabelIssueSettings(C=0.1, top=8, columns=4), out=tmp_path)
    frame = report.frame
    found = frame[frame["id"].isin(emb.ids[flipped])]
    assert len(found) >= len(flipped) - 2 and len(frame) <= len(found) + 2  # 12 flipped images (6 objects)
    pos = {image_id: i for i, image_id in enumerate(emb.ids)}
    assert (found["suggested"] == found["id"].map(lambda i: true[pos[i]])).all()
    # 'shard' (one object, 3 images) cannot fill 5 group folds: neither judged nor suggested, and said why
    assert list(report.left_out) == ["shard"] and "1 groups" in report.left_out["shard"]
    assert "shard" not in set(frame["given"]) | set(frame["suggested"]) and "shard" not in report.result.classes
    assert report.rows["dropped_rare"] == 3 and report.result.n == len(emb) - 3
    with Image.open(report.gallery) as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 150
    data = json.loads(json.dumps(report.to_dict()))
    assert data["left_out_classes"] == report.left_out and data["gallery"].endswith("label_issues_shape.png")
    assert pd.read_csv(report.csv)["id"].tolist() == frame["id"].tolist()


def test_nothing_left_to_learn_is_one_message(tmp_path):
    emb, _, _ = toy_embeddings(tmp_path, n_groups=8, flips=0)  # 2 objects per shape: fewer than 5 folds
    with pytest.raises(FeatkitError, match="too small for 5 folds.*use a smaller --cv"):
        find_label_issues(emb, "shape", settings=LabelIssueSettings(C=0.1), out=tmp_path)


# -- label pairs ------------------------------------------------------------------------------------------------
def test_planted_label_pairs_are_listed_and_rare_labels_are_not(tmp_path):
    emb, _, _ = toy_embeddings(tmp_path, flips=0, tiny=0)
    colour = emb.manifest.labels["colour"]
    shape = emb.manifest.labels["shape"]
    planted = [5, 64, 100]  # a cup, a plate, a vase, each given a colour no other image of its shape has
    colour[planted] = ["green", "blue", "blue"]
    odd = len(emb) - 1  # a vase in a colour of its own: a rare label alone, not a conflicting pair
    colour[odd] = "red"
    report = label_pair_conflicts(emb, out=tmp_path)
    frame = report.frame
    assert sorted(frame["id"]) == sorted(emb.ids[planted])
    assert (frame["support"] == 0).all() and (frame["expected"] >= 5).all()
    row = frame.set_index("id").loc[emb.ids[5]]
    assert (row["label_a"], row["label_b"], row["usual_b_for_a"]) == ("cup", "green", "white")
    assert pd.read_csv(report.csv)["id"].tolist() == frame["id"].tolist()
    assert shape[odd] == "vase" and emb.ids[odd] not in set(frame["id"])


def test_a_pair_seen_only_inside_its_own_group_still_counts_as_unseen():
    a = np.array(["x"] * 20 + ["y"] * 20, dtype=object)
    b = np.array(["p"] * 20 + ["q"] * 20, dtype=object)
    b[[0, 1]] = "q"  # both photos of one object: x with q
    b[[2]] = "q"  # and one photo of another object
    codes = np.array([0, 0] + list(range(1, 39)))
    found = pair_conflicts(a, b, codes, settings=PairSettings(max_support=0))
    assert list(found["position"]) == []  # rows 0/1 see row 2 elsewhere, row 2 sees rows 0/1
    found = pair_conflicts(a, b, codes, settings=PairSettings(max_support=1))
    assert list(found["position"]) == [0, 1]  # each sees one other image outside its object; row 2 sees two
    with pytest.raises(FeatkitError, match="max_support"):
        PairSettings(max_support=-1).validate()


def test_label_pairs_need_two_tasks(tmp_path):
    emb, _, _ = toy_embeddings(tmp_path)
    with pytest.raises(FeatkitError, match="at least two tasks"):
        label_pair_conflicts(emb, ["shape"], out=tmp_path)
