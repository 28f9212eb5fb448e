"""Honest evaluation: splits that respect groups and split columns, tuning blind to test rows, metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from featkit.errors import FeatkitError
from featkit.data.splits import check_labels, class_counts, evaluation_splits, rare_classes
from featkit.evaluate import (EvalSettings, build_head, compute_metrics, cross_evaluate, out_of_fold_proba,
                              tune_and_fit)


def grouped_data(n_groups=60, per_group=5, dim=30, seed=0):
    """Each group (a photographer) has its own strong background and one label; labels carry little signal.

    A model can recognise the group from the background, so ungrouped folds leak:
    photos of a test group's photographer are in training with the same label.
    """
    rng = np.random.default_rng(seed)
    labels = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, n_groups)]
    X, y, g = [], [], []
    for k in range(n_groups):
        background = rng.normal(scale=3.0, size=dim)
        X.append(background + rng.normal(scale=0.5, size=(per_group, dim)))
        y += [labels[k]] * per_group
        g += [f"g{k}"] * per_group
    return np.vstack(X).astype(np.float32), np.array(y, dtype=object), np.array(g, dtype=object)


def test_group_folds_never_split_a_group_and_test_every_row_once():
    _, y, g = grouped_data()
    splits = evaluation_splits(y, g, cv=5, seed=0)
    assert splits.mode == "group" and len(splits.folds) == 5
    assert "StratifiedGroupKFold" in splits.description
    tested = np.concatenate([test for _, test in splits.folds])
    assert sorted(tested.tolist()) == list(range(len(y)))
    for train, test in splits.folds:
        assert not set(g[train]) & set(g[test])


def test_stratified_mode_ignores_groups_and_says_so():
    _, y, g = grouped_data()
    splits = evaluation_splits(y, g, cv=5, mode="stratified")
    assert "ignoring groups" in splits.description
    assert any(set(g[train]) & set(g[test]) for train, test in splits.folds)


def test_split_column_takes_test_rows_then_val_rows():
    y = np.array(["a", "b"] * 5, dtype=object)
    split = np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 2, dtype=object)
    s = evaluation_splits(y, split=split)
    train, test = s.folds[0]
    assert s.mode == "column" and test.tolist() == [8, 9] and train.tolist() == list(range(8))
    s = evaluation_splits(y, split=np.array(["train"] * 8 + ["val"] * 2, dtype=object))
    assert s.folds[0][1].tolist() == [8, 9] and "test (val) 2 rows" in s.description
    with pytest.raises(FeatkitError, match="no test rows: its values are a, b"):
        evaluation_splits(y, split=np.array(["a", "b"] * 5, dtype=object))


def test_split_column_reports_groups_on_both_sides():
    y = np.array(["a", "b", "a", "b"], dtype=object)
    s = evaluation_splits(y, np.array(["g1", "g2", "g1", "g3"], dtype=object),
                          split=np.array(["train", "train", "test", "test"], dtype=object))
    assert s.warnings == ["1 groups appear on both sides of the split column (a leak in the split itself)"]


def test_split_mode_errors_name_what_is_missing():
    y = np.array(["a", "b"] * 5, dtype=object)
    with pytest.raises(FeatkitError, match="unknown split mode 'random'; valid choices"):
        evaluation_splits(y, mode="random")
    with pytest.raises(FeatkitError, match="needs a group column"):
        evaluation_splits(y, mode="group")
    with pytest.raises(FeatkitError, match="3 groups cannot fill 5 group-aware folds"):
        evaluation_splits(y, np.array(["g1", "g2", "g3"] * 3 + ["g1"], dtype=object), cv=5)


def test_rare_classes_count_groups_when_grouped():
    y = np.array(["a"] * 20 + ["b"] * 6, dtype=object)
    g = np.array([f"g{i}" for i in range(20)] + ["x", "x", "y", "y", "z", "z"], dtype=object)
    assert rare_classes(y, groups=g, splits_mode="group", cv=5, inner_cv=3) == {
        "b": "3 groups (< 5 folds: it cannot appear in every fold)"}
    assert rare_classes(y, groups=g, splits_mode="stratified", cv=5, inner_cv=3) == {}
    assert class_counts(y, g) == {"a": 20, "b": 3}


def test_labels_must_be_strings():
    assert check_labels(["a", None], allow_unknown=True).tolist() == ["a", None]
    with pytest.raises(FeatkitError, match=r"labels must be strings; row 1 holds 3 \(int\)"):
        check_labels(["a", 3, "b"])
    with pytest.raises(FeatkitError, match=r"row 0 holds nan \(float\)"):
        check_labels([float("nan"), "b"])


def test_metrics_match_a_hand_computed_example():
    y_true = ["a", "a", "a", "a", "b", "b", "c", "c"]
    y_pred = ["a", "a", "a", "b", "b", "b", "a", "c"]
    out = compute_metrics(y_true, y_pred, ["a", "b", "c"])
    m = out["metrics"]
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == round((3 / 4 + 1 + 1 / 2) / 3, 4)
    assert out["per_class"]["a"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    assert out["per_class"]["c"]["recall"] == 0.5 and out["per_class"]["c"]["precision"] == 1.0
    assert out["confusion_matrix"]["matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["macro_f1"] == round((0.75 + 0.8 + 2 / 3) / 3, 4)


def test_group_aware_out_of_fold_probabilities_expose_the_leak_random_folds_hide():
    X, y, g = grouped_data(n_groups=90, dim=128, seed=1)
    proba_g, classes = out_of_fold_proba(X, y, g, clf="logreg", cv=5, params={"C": 1.0})
    proba_r, _ = out_of_fold_proba(X, y, None, clf="logreg", cv=5, params={"C": 1.0})
    assert classes == ["a", "b", "c"] and proba_g.shape == (len(y), 3)
    np.testing.assert_allclose(proba_g.sum(axis=1), 1.0, atol=1e-6)
    grouped = balanced_accuracy_score(y, np.array(classes)[proba_g.argmax(1)])
    leaky = balanced_accuracy_score(y, np.array(classes)[proba_r.argmax(1)])
    assert leaky > 0.9  # the model recognises the photographer
    assert grouped < 0.6  # ... which says nothing about unseen photographers (chance is 1/3)


def test_out_of_fold_proba_refuses_bad_labels():
    X = np.zeros((4, 2))
    with pytest.raises(FeatkitError, match="labels must be strings"):
        out_of_fold_proba(X, [1, 2, 1, 2])
    with pytest.raises(FeatkitError, match="at least 2 classes"):
        out_of_fold_proba(X, ["a"] * 4)
    with pytest.raises(FeatkitError, match="X has 4 rows but y has 3"):
        out_of_fold_proba(X, ["a", "b", "a"])


def test_hyperparameters_are_chosen_without_looking_at_test_rows():
    X, y, g = grouped_data(n_groups=60, seed=2)
    rng = np.random.default_rng(0)
    X = X + rng.normal(size=X.shape).astype(np.float32) * 2
    splits = evaluation_splits(y, g, cv=3, seed=0)
    settings = EvalSettings(cv=3, params={"C": (0.001, 0.1, 10.0)})
    for train, test in splits.folds[:1]:
        one = type(splits)([(train, test)], splits.mode, splits.description)
        first = cross_evaluate(X, y, clf="logreg", splits=one, groups=g, settings=settings)
        scrambled = y.copy()
        scrambled[test] = np.where(y[test] == "a", "b", "a")  # other test labels must not change the choice
        second = cross_evaluate(X, scrambled, clf="logreg", splits=one, groups=g, settings=settings)
        assert first.folds[0]["params"] == second.folds[0]["params"]
        assert first.folds[0]["tuning"]["inner_scores"] == second.folds[0]["tuning"]["inner_scores"]
        assert first.folds[0]["balanced_accuracy"] != second.folds[0]["balanced_accuracy"]
        assert first.folds[0]["tuning"]["searched"] == {"C": [0.001, 0.1, 10.0]}


def test_lgbm_rounds_come_from_early_stopping_on_training_rows():
    X, y, g = grouped_data(n_groups=60, seed=3)
    X[:, 0] += np.where(y == "a", 4.0, 0.0)  # give the label some signal
    settings = EvalSettings(params={"learning_rate": (0.3,)}, stopping_rounds=10)
    pipe, decided = build_head("lgbm", y, n_features=X.shape[1], settings=settings)
    fitted, chosen, detail = tune_and_fit("lgbm", pipe, X=X, y=y, groups=g, settings=settings)
    assert decided["pca"]["used"] is None  # 30 dims: no PCA by default
    assert 1 <= chosen["n_estimators"] < 1000
    assert "early stopping" in detail["method"] and detail["tried"][0]["rounds"] < 1000
    assert "validation split of the training rows" in detail["method"]
    assert fitted.named_steps["clf"].n_estimators == chosen["n_estimators"]


def test_lgbm_searches_leaves_when_given_a_list():
    X, y, g = grouped_data(n_groups=40, seed=4)
    settings = EvalSettings(params={"num_leaves": (3, 7), "n_estimators": (40,)})
    pipe, _ = build_head("lgbm", y, n_features=X.shape[1], settings=settings)
    _, chosen, detail = tune_and_fit("lgbm", pipe, X=X, y=y, groups=g, settings=settings)
    assert "40 rounds (fixed)" in detail["method"]  # rounds fixed by the user: no early stopping
    assert [t["num_leaves"] for t in detail["tried"]] == [3, 7] and chosen["n_estimators"] == 40
    best = max(detail["tried"], key=lambda t: t["val_balanced_accuracy"])
    assert chosen["num_leaves"] == best["num_leaves"]


def test_wide_embeddings_get_pca_for_lgbm_only():
    y = np.array(["a", "b"] * 200, dtype=object)
    _, decided = build_head("lgbm", y, n_features=1280, settings=EvalSettings())
    assert decided["pca"]["used"] == 128 and "1280 → 128" in decided["pca"]["reason"]
    _, decided = build_head("logreg", y, n_features=1280, settings=EvalSettings())
    assert decided["pca"]["used"] is None
    _, decided = build_head("lgbm", y, n_features=1280, settings=EvalSettings(pca=0))
    assert decided["pca"]["used"] is None


def test_manifest_splits_cover_labelled_rows_and_keep_objects_together(demo_config):
    from featkit.data import load_manifest
    from featkit.data.splits import manifest_splits

    collection = load_manifest(demo_config)
    rows, splits = manifest_splits(collection, task="glaze", cv=4)
    assert len(rows) == len(collection) and splits.mode == "group"
    ids = np.asarray(collection.ids)[rows]
    for train, test in splits.folds:
        objects = lambda idx: {i.split("/")[-1].split("_v")[0] for i in ids[idx]}  # noqa: E731
        assert not objects(train) & objects(test)


# -- calibration, review threshold, the C path -------------------------------------------------------------------
def _blobs(n: int, dim: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, each shifted by ``shift`` along its own axis, in ``dim`` noisy dimensions."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 3, n)
    X = rng.normal(size=(n, dim)) + shift * np.eye(3, dim)[k]
    return X.astype(np.float32), np.array(["a", "b", "c"], dtype=object)[k]


def test_out_of_fold_calibration_tames_an_overconfident_head():
    from featkit.heads.calibration import expected_calibration_error

    X, y = _blobs(400, 100, 0.6)  # 100 dims, little signal: logreg with C=10 overfits and is sure of everything
    splits = evaluation_splits(y, None, cv=4, mode="stratified", seed=0)
    ev = cross_evaluate(X, y, clf="logreg", splits=splits, settings=EvalSettings(params={"C": (10.0,)}))
    y_idx = np.searchsorted(ev.classes, y)
    before, after = expected_calibration_error(ev.by_method["none"], y_idx), expected_calibration_error(ev.proba, y_idx)
    assert before > 0.3 and after < 0.1  # measured: 0.476 -> 0.010
    # each fold calibrates on its own training rows, each predicted by an inner model that did not train on it
    assert all(f["calibration"]["method"] != "none" and f["calibration"]["rows"] == f["n_train"] for f in ev.folds)
    same = cross_evaluate(X, y, clf="logreg", splits=splits, settings=EvalSettings(params={"C": (10.0,)},
                                                                                  calibration="none"))
    # "before" is the head as it was (up to lbfgs stopping early at C=10: the calibrated run starts warm)
    assert expected_calibration_error(same.proba, y_idx) == pytest.approx(before, abs=0.02)
    assert (same.proba.argmax(1) == ev.by_method["none"].argmax(1)).mean() > 0.9  # measured 0.955 at C=10


def test_review_threshold_is_the_lowest_confidence_whose_kept_predictions_reach_the_precision():
    from featkit.heads.calibration import review_threshold

    confidence = np.array([0.9, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, True, False, True, False])
    strict = review_threshold(confidence, correct, 0.95)
    assert (strict["threshold"], strict["kept"], strict["sent_to_review"]) == (0.8, 3, 3)
    loose = review_threshold(confidence, correct, 0.8)  # 0.7 keeps 3 of 4 right (0.75); 0.6 keeps 4 of 5 (0.8)
    assert (loose["threshold"], loose["kept"], loose["precision_kept"]) == (0.6, 5, 0.8)
    never = review_threshold(confidence, np.zeros(6, dtype=bool), 0.5)
    assert never["threshold"] is None and never["sent_to_review"] == 6


def test_a_best_c_at_the_edge_grows_the_grid_and_a_given_grid_warns_naming_the_flag():
    from featkit.evaluate import tune

    X, y = _blobs(300, 10, 1.5)  # clear signal, few dims: weak regularisation wins, beyond logreg's grid (max 0.01)
    settings = EvalSettings(calibration="none")
    tuned = tune("logreg", build_head("logreg", y, n_features=10, settings=settings)[0], X=X, y=y, groups=None,
                 settings=settings)
    assert "went on to 0.1" in tuned.detail["extended"] and tuned.params["C"] >= 0.1 and not tuned.warnings
    given = EvalSettings(calibration="none", params={"C": (1e-4, 1e-3)})
    tuned = tune("logreg", build_head("logreg", y, n_features=10, settings=given)[0], X=X, y=y, groups=None,
                 settings=given)
    assert tuned.params["C"] == 1e-3 and "extended" not in tuned.detail
    (warning,) = tuned.warnings
    assert "C=0.001 is the highest value searched" in warning and "--param C=0.0001,0.001,0.01,0.1" in warning


def test_calibration_is_chosen_when_a_class_of_the_head_is_absent_from_its_out_of_fold_rows():
    from featkit.heads.calibration import choose_calibration

    rng = np.random.default_rng(0)
    y = np.array(["a", "b"] * 60, dtype=object)  # the head also knows "c" (lgbm's validation split missed it)
    proba = rng.dirichlet([1, 1, 1], size=120)
    proba[:, 0] += (y == "a") * 2
    proba /= proba.sum(axis=1, keepdims=True)
    halves = [(np.arange(60), np.arange(60, 120)), (np.arange(60, 120), np.arange(60))]
    choice = choose_calibration(proba, y, decision=False, own_proba=proba, base="none",
                                candidates=["none", "temperature", "isotonic"], classes=np.array(["a", "b", "c"]),
                                base_weight=None, halves=halves)
    assert choice["method"] in ("none", "temperature", "isotonic") and set(choice["cross_fitted"]) == {
        "none", "temperature", "isotonic"}


def test_tuning_by_log_likelihood_scores_the_held_out_labels_probabilities():
    from featkit.evaluate import tune

    X, y = _blobs(300, 10, 0.6)
    flip = np.random.default_rng(1).random(len(y)) < 0.2  # noisy labels: what label issues tunes on
    y = np.where(flip, np.roll(y, 1), y)
    settings = EvalSettings(calibration="none", tune_by="log_likelihood")
    tuned = tune("logreg", build_head("logreg", y, n_features=10, settings=settings)[0], X=X, y=y, groups=None,
                 settings=settings)
    scores = {r["C"]: r["score"] for r in tuned.detail["inner_scores"]}
    assert "log-likelihood of the held-out labels" in tuned.detail["method"]
    assert all(-np.log(3) * 2 < s < 0 for s in scores.values())  # mean log-probabilities, not accuracies
    assert scores[tuned.params["C"]] == max(scores.values())
    with pytest.raises(FeatkitError, match="'accuracy'.*balanced_accuracy, log_likelihood"):
        EvalSettings(tune_by="accuracy").validate()
