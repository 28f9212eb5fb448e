"""The head registry: each head is a real pipeline that learns, rebalancing that changes outcomes."""

from __future__ import annotations

import numpy as np
import pytest
from imblearn.over_sampling import SMOTE, RandomOverSampler
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from featkit.errors import FeatkitError
from featkit.heads import (HeadSpec, create_head, list_heads, list_samplers, parse_params, rebalance_choices,
                           register_head, resolve_rebalance)
from featkit.heads.svm import PrimalLinearSVC


def blobs(n_per_class=(200, 200, 200), dim=40, sep=3.0, seed=0):
    """Gaussian clusters (string labels) in ``dim`` dims, most of them noise."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k, n in enumerate(n_per_class):
        centre = np.zeros(dim)
        centre[k % dim] = sep
        X.append(rng.normal(size=(n, dim)) + centre)
        y += [f"class_{k}"] * n
    return np.vstack(X).astype(np.float32), np.array(y, dtype=object)


def test_registry_lists_the_builtin_heads_and_samplers():
    assert {"logreg", "linsvc", "lgbm"} <= set(list_heads())
    assert list_heads("lin*") == ["linsvc"]
    assert {"oversample", "smote", "undersample"} <= set(list_samplers())
    assert rebalance_choices()[:3] == ["auto", "none", "class_weight"]


def test_unknown_head_names_the_valid_ones():
    with pytest.raises(FeatkitError, match=r"unknown head 'xgb'; valid choices: lgbm, linsvc, logreg"):
        create_head("xgb", n_classes=3)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_head(HeadSpec(name="logreg", description="again", build=lambda *a, **k: None))


def test_bad_arguments_are_refused_with_the_valid_values():
    with pytest.raises(FeatkitError, match="unknown rebalance 'magic'; valid choices: .*smote"):
        create_head("logreg", n_classes=3, rebalance="magic")
    with pytest.raises(FeatkitError, match=r"unknown parameter\(s\) gamma for head 'logreg'; valid: C"):
        create_head("logreg", n_classes=3, params={"gamma": 1})
    with pytest.raises(FeatkitError, match="at least 2 classes"):
        create_head("lgbm", n_classes=1)
    with pytest.raises(FeatkitError, match="pca must be a positive"):
        create_head("logreg", n_classes=3, pca=-4)


QUICK = {"logreg": {"C": 0.1}, "linsvc": {"C": 0.01}, "lgbm": {"n_estimators": 60}}  # not tuned here


@pytest.mark.parametrize("name", ["logreg", "linsvc", "lgbm"])
@pytest.mark.parametrize("rebalance", ["none", "class_weight", "oversample", "smote", "undersample"])
def test_every_head_learns_with_every_rebalancing(name, rebalance):
    X, y = blobs((150, 60, 30), sep=4.0, seed=1)
    Xt, yt = blobs((100, 100, 100), sep=4.0, seed=2)
    pipe = create_head(name, n_classes=3, rebalance=rebalance, pca=None, params=QUICK[name],
                       class_counts={"class_0": 150, "class_1": 60, "class_2": 30})
    steps = [s for s, _ in pipe.steps]
    assert steps[0] == "scale" and steps[-1] == "clf"
    assert ("sampler" in steps) == (rebalance in ("oversample", "smote", "undersample"))
    pipe.fit(X, y)
    if name == "linsvc":  # probabilities come from its out-of-fold calibration (test_evaluate)
        assert pipe.decision_function(Xt).shape == (300, 3) and not hasattr(pipe, "predict_proba")
    else:
        proba = pipe.predict_proba(Xt)
        assert proba.shape == (300, 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert list(pipe.classes_) == ["class_0", "class_1", "class_2"]
    assert balanced_accuracy_score(yt, pipe.predict(Xt)) > 0.8


def test_class_weight_reaches_the_classifier_and_samplers_sit_before_it():
    lin = create_head("linsvc", n_classes=2, rebalance="class_weight")
    assert lin.named_steps["clf"].class_weight == "balanced"
    smote = create_head("logreg", n_classes=2, rebalance="smote", pca=5, class_counts={"a": 100, "b": 8})
    assert [s for s, _ in smote.steps] == ["scale", "pca", "sampler", "clf"]
    assert isinstance(smote.named_steps["sampler"], SMOTE)
    assert smote.named_steps["sampler"].k_neighbors == 3  # small class: fewer neighbours than the default 5
    assert isinstance(create_head("lgbm", n_classes=2, rebalance="oversample").named_steps["sampler"],
                      RandomOverSampler)
    assert create_head("logreg", n_classes=2, rebalance="none", pca=None, params={"C": 0.5}).named_steps["clf"].C == 0.5


def test_params_are_parsed_against_each_hyperparameters_type():
    assert parse_params(["C=0.1", "max_iter=50"], "logreg") == {"C": (0.1,), "max_iter": (50,)}
    assert parse_params(["num_leaves=7,15,31"], "lgbm") == {"num_leaves": (7, 15, 31)}
    with pytest.raises(FeatkitError, match=r"--param C=abc: C of head 'logreg' takes a number \(e.g. C=0.0001\), got 'abc'"):
        parse_params(["C=abc"], "logreg")
    with pytest.raises(FeatkitError, match="num_leaves of head 'lgbm' takes a whole number .* got '7.5'"):
        parse_params(["num_leaves=7.5"], "lgbm")
    with pytest.raises(FeatkitError, match="unknown parameter 'gamma' for head 'linsvc'; valid: C, max_iter, tol"):
        parse_params(["gamma=1"], "linsvc")
    with pytest.raises(FeatkitError, match="is not NAME=VALUE"):
        parse_params(["C"], "logreg")


def test_rebalancing_raises_minority_recall_on_imbalanced_data():
    # overlapping classes, 20:1: without rebalancing the minority class is mostly predicted away
    X, y = blobs((1000, 50), dim=10, sep=1.5, seed=3)
    Xt, yt = blobs((500, 500), dim=10, sep=1.5, seed=4)
    recalls = {}
    for name in ("logreg", "linsvc"):
        for rebalance in ("none", "class_weight", "oversample", "smote", "undersample"):
            pipe = create_head(name, n_classes=2, rebalance=rebalance, class_counts={"class_0": 1000, "class_1": 50})
            recalls[name, rebalance] = recall_score(yt, pipe.fit(X, y).predict(Xt), pos_label="class_1")
        for rebalance in ("class_weight", "oversample", "smote", "undersample"):
            assert recalls[name, rebalance] > recalls[name, "none"] + 0.2, recalls


_BALANCED = "balanced weights depend on class frequencies, which repeating rows changes (as class_weight='balanced')"


@parametrize_with_checks([PrimalLinearSVC(), PrimalLinearSVC(class_weight="balanced", warm_start=True)],
                         expected_failed_checks=lambda est: {
                             "check_sample_weight_equivalence_on_dense_data": _BALANCED,
                             "check_sample_weight_equivalence_on_sparse_data": _BALANCED}
                         if est.class_weight == "balanced" else {})
def test_the_primal_svm_follows_the_estimator_contract(estimator, check):
    check(estimator)


def test_the_primal_svm_solves_what_liblinear_solves():
    """LinearSVC's objective (squared hinge, L2; its intercept all but unpenalised): the same solution."""
    from sklearn.svm import LinearSVC

    X, y = blobs((120, 80, 40), dim=12, sep=2.0, seed=5)
    Xt, _ = blobs((100, 100, 100), dim=12, sep=2.0, seed=6)
    ours = PrimalLinearSVC(C=0.05, tol=1e-6).fit(X, y)
    theirs = LinearSVC(C=0.05, tol=1e-8, intercept_scaling=1000, max_iter=100_000).fit(X, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-3)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, atol=1e-3)
    assert np.mean(ours.predict(Xt) == theirs.predict(Xt)) > 0.99
    warm = PrimalLinearSVC(C=0.05, tol=1e-6, warm_start=True)
    warm.coef_, warm.intercept_ = ours.coef_, ours.intercept_
    assert warm.fit(X, y).n_iter_ <= 2 < ours.n_iter_  # resuming at the optimum leaves nothing to do


def test_auto_rebalance_says_what_it_chose_and_why():
    used, reason = resolve_rebalance("lgbm", "auto", {"a": 1000, "b": 23})
    assert used == "class_weight" and "43.5" in reason and "a 1000 vs b 23" in reason
    used, reason = resolve_rebalance("logreg", "auto", {"a": 100, "b": 90})
    assert used == "none" and "balanced" in reason
    assert resolve_rebalance("linsvc", "smote", {"a": 100, "b": 9}) == ("smote", "as requested")
