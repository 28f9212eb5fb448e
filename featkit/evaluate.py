"""Honest evaluation of a head: hyperparameters chosen inside training data, metrics.

* **Splits** come from :mod:`featkit.data.splits` (split column, else group-aware folds).
* **Tuning** (:func:`tune_and_fit`): hyperparameters are chosen on the training rows of
  each fold only — inner cross-validation for grids (C of the linear heads), early
  stopping on a validation split of the training rows for boosting rounds. The inner
  splits are group-aware too.
* **Metrics** (:func:`compute_metrics`): accuracy, balanced accuracy, macro-F1, per-class
  precision/recall/F1/support and the confusion matrix, on pooled out-of-fold predictions.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)
from sklearn.model_selection import GridSearchCV, ParameterGrid
from threadpoolctl import threadpool_limits

from featkit.data.splits import (SPLIT_MODES, Splits, check_labels, class_counts, evaluation_splits, inner_splits,
                                 validation_split)
from featkit.errors import FeatkitError, choices_message
from featkit.heads.registry import CLASS_WEIGHT, HeadSpec, create_head, get_head_spec, resolve_rebalance


@dataclass(frozen=True)
class EvalSettings:
    """How a head is evaluated and tuned; every field has a ``featkit fit`` flag."""

    cv: int = 5  # outer folds when there is no split column
    inner_cv: int = 3  # inner folds for grid search on training rows
    split: str = "auto"  # auto | column | group | stratified
    rebalance: str = "auto"
    pca: int | None = None  # None: the head's default (lgbm: 128 on wide embeddings); 0: no PCA
    params: Mapping[str, tuple] = field(default_factory=dict)  # one value: fixed; several: searched
    seed: int = 0
    n_jobs: int | None = None  # threads (lgbm: 1 unless set; linear heads: BLAS default unless set)
    validation_fraction: float = 0.2  # early stopping: share of training rows held out
    stopping_rounds: int = 30

    def validate(self) -> None:
        if self.split not in SPLIT_MODES:
            raise FeatkitError(choices_message("split mode", self.split, SPLIT_MODES))
        if self.cv < 2:
            raise FeatkitError(f"cv must be at least 2 folds, got {self.cv}")
        if self.inner_cv < 2:
            raise FeatkitError(f"inner cv must be at least 2 folds, got {self.inner_cv}")
        if not 0.05 <= self.validation_fraction <= 0.5:
            raise FeatkitError(f"validation fraction must be in [0.05, 0.5], got {self.validation_fraction}")
        if self.pca is not None and self.pca < 0:
            raise FeatkitError(f"pca must be 0 (none) or a positive number of components, got {self.pca}")


# -- tuning ----------------------------------------------------------------------------
def split_params(spec: HeadSpec, params: Mapping[str, Sequence]) -> tuple[dict, dict]:
    """(fixed, searched): user values merged with the head's grid; one value means fixed."""
    unknown = set(params) - spec.param_names()
    if unknown:
        raise FeatkitError(
            f"unknown parameter(s) {', '.join(sorted(unknown))} for head {spec.name!r}; "
            f"valid: {', '.join(sorted(spec.param_names()))}"
        )
    merged = {**{k: tuple(v) for k, v in spec.grid.items()}, **{k: tuple(v) for k, v in params.items()}}
    fixed = {k: v[0] for k, v in merged.items() if len(v) == 1}
    searched = {k: list(v) for k, v in merged.items() if len(v) > 1}
    return fixed, searched


def _fit_steps(pipe, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit every step but the classifier (samplers resample); return what the classifier sees."""
    for _, step in pipe.steps[:-1]:
        if step is None or step == "passthrough":
            continue
        if hasattr(step, "fit_resample"):
            X, y = step.fit_resample(X, y)
        else:
            X = step.fit_transform(X, y)
    return X, y


def _transform_steps(pipe, X: np.ndarray) -> np.ndarray:
    """Apply the fitted steps but the classifier as at predict time (samplers skipped)."""
    for _, step in pipe.steps[:-1]:
        if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
            continue
        X = step.transform(X)
    return X


def _prefixed(spec: HeadSpec, params: Mapping[str, Any]) -> dict:
    return {spec.param_prefix + k: v for k, v in params.items()}


def _tune_grid(spec, pipe, X, y, groups, *, fixed, searched, settings):
    if not searched:
        return pipe.fit(X, y), dict(fixed), {"method": "none (all hyperparameters fixed)"}
    folds = inner_splits(y, groups, k=settings.inner_cv, seed=settings.seed)
    search = GridSearchCV(pipe, {spec.param_prefix + k: v for k, v in searched.items()}, cv=folds,
                          scoring="balanced_accuracy", refit=True, n_jobs=1, error_score=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small inner folds: "y_pred contains classes not in y_true" etc.
        search.fit(X, y)
    if not np.isfinite(search.cv_results_["mean_test_score"]).any():
        raise FeatkitError(f"every {spec.name} candidate failed on the inner folds of a training set of {len(y)} rows "
                           f"(classes: {class_counts(y)}); use --rebalance class_weight or a smaller --inner-cv")
    best = {k[len(spec.param_prefix):]: _plain(v) for k, v in search.best_params_.items()}
    scores = [{**{k[len(spec.param_prefix):]: _plain(v) for k, v in params.items()}, "score": round(float(score), 4)}
              for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"])]
    detail = {"method": f"inner {settings.inner_cv}-fold CV on training rows, balanced accuracy",
              "searched": searched, "inner_scores": scores}
    return search.best_estimator_, {**fixed, **best}, detail


def _tune_early_stopping(spec, pipe, X, y, groups, *, fixed, searched, settings):
    import lightgbm

    rounds_fixed = len(settings.params.get("n_estimators", ())) == 1
    if rounds_fixed and not searched:
        return pipe.fit(X, y), dict(fixed), {"method": "none (rounds fixed by the user)"}
    train, val = validation_split(y, groups, fraction=settings.validation_fraction, seed=settings.seed)
    best = None
    tried = []
    for candidate in ParameterGrid(searched) if searched else [{}]:
        trial = clone(pipe).set_params(**_prefixed(spec, candidate))
        Xt, yt = _fit_steps(trial, X[train], y[train])
        Xv = _transform_steps(trial, X[val])
        clf = trial.steps[-1][1]
        eval_weight = ["balanced"] if getattr(clf, "class_weight", None) == "balanced" else None
        with warnings.catch_warnings():
            # LightGBM 4.7 deprecates eval_set for eval_X/eval_y, but only eval_set label-encodes string classes
            warnings.filterwarnings("ignore", message=".*eval_set.*deprecated")
            clf.fit(Xt, yt, eval_set=[(Xv, y[val])], eval_class_weight=eval_weight,
                    callbacks=[] if rounds_fixed else [lightgbm.early_stopping(settings.stopping_rounds,
                                                                               verbose=False)])
        rounds = int(clf.n_estimators if rounds_fixed else (clf.best_iteration_ or clf.n_estimators))
        score = float(balanced_accuracy_score(y[val], clf.predict(Xv, num_iteration=rounds)))
        tried.append({**{k: _plain(v) for k, v in candidate.items()}, "rounds": rounds,
                      "val_balanced_accuracy": round(score, 4)})
        if best is None or score > best[0]:
            best = (score, candidate, rounds)
    _, candidate, rounds = best
    final_rounds = rounds if rounds_fixed else max(1, int(round(rounds * len(y) / max(1, len(train)))))
    chosen = {**fixed, **{k: _plain(v) for k, v in candidate.items()}, "n_estimators": final_rounds}
    fitted = pipe.set_params(**_prefixed(spec, chosen)).fit(X, y)
    how = (f"{rounds} rounds (fixed)" if rounds_fixed else
           f"early stopping ({settings.stopping_rounds} rounds patience): best {rounds} rounds, refit with "
           f"{final_rounds} (scaled by rows)")
    detail = {"method": (f"validation split of the training rows ({len(val)} rows), balanced accuracy; {how}; "
                         f"refit on all {len(y)} training rows"), "tried": tried}
    return fitted, chosen, detail


_TUNERS = {"grid": _tune_grid, "early_stopping": _tune_early_stopping}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def resolve_pca(spec: HeadSpec, pca: int | None, *, n_features: int, n_rows: int) -> tuple[int | None, str]:
    """Components to use and why (the head default applies only to wider embeddings)."""
    limit = max(1, min(n_features, n_rows - 1))
    if pca == 0:
        return None, "off (--pca 0)"
    if pca is None:
        if spec.default_pca and n_features > 2 * spec.default_pca:
            used = min(spec.default_pca, limit)
            return used, f"{spec.name} default: {n_features} → {used} dims (speed on wide embeddings)"
        return None, "off"
    if pca >= n_features:
        return None, f"off ({pca} ≥ {n_features} features)"
    return min(pca, limit), "as requested"


def build_head(clf: str, y: np.ndarray, *, n_features: int, settings: EvalSettings,
               counts: dict[str, int] | None = None) -> tuple[Any, dict]:
    """The unfitted pipeline for ``clf`` on labels ``y`` plus what was decided (rebalance, pca)."""
    spec = get_head_spec(clf)
    counts = counts or class_counts(y)
    used, reason = resolve_rebalance(clf, settings.rebalance, counts)
    # PCA is also fitted on inner folds / the validation split's training part: size it for the smallest
    shrink = min((settings.inner_cv - 1) / settings.inner_cv, 1 - settings.validation_fraction)
    pca, pca_reason = resolve_pca(spec, settings.pca, n_features=n_features, n_rows=int(len(y) * shrink) - 1)
    fixed, _ = split_params(spec, settings.params)
    pipe = create_head(clf, n_classes=len(counts), rebalance=used, pca=pca, params=fixed, class_counts=counts,
                       seed=settings.seed, n_jobs=settings.n_jobs)
    decided = {"rebalance": {"requested": settings.rebalance, "used": used, "reason": reason},
               "pca": {"requested": settings.pca, "used": pca, "reason": pca_reason}}
    return pipe, decided


def tune_and_fit(clf: str, pipe, *, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                 settings: EvalSettings) -> tuple[Any, dict, dict]:
    """Fit ``pipe`` on (X, y), choosing searched hyperparameters inside this data only.

    Returns the fitted pipeline, the chosen hyperparameters and how they were chosen.
    """
    spec = get_head_spec(clf)
    fixed, searched = split_params(spec, settings.params)
    tuner = _TUNERS[spec.tuning]
    limit = threadpool_limits(settings.n_jobs) if settings.n_jobs else contextlib.nullcontext()
    try:
        with limit:  # BLAS/OpenMP threads of the linear heads follow --jobs too
            return tuner(spec, pipe, X, y, groups, fixed=fixed, searched=searched, settings=settings)
    except ValueError as err:
        if "n_neighbors" in str(err) or "Expected n_neighbors" in str(err):
            raise FeatkitError(
                f"smote needs more members per class than some training fold has ({err}); "
                "use --rebalance oversample or class_weight"
            ) from None
        raise


# -- metrics ---------------------------------------------------------------------------
def compute_metrics(y_true: Sequence, y_pred: Sequence, classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1/support, confusion matrix."""
    y_true = np.asarray(y_true, dtype=object).astype(str)
    y_pred = np.asarray(y_pred, dtype=object).astype(str)
    labels = list(classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "metrics": {
            "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
            "balanced_accuracy": round(float(balanced), 4),
            "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)), 4),
            "chance_balanced_accuracy": round(1.0 / len(labels), 4),
        },
        "per_class": {
            label: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                    "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": {"labels": labels,
                             "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
    }


def aligned_proba(pipe, X: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """``predict_proba`` with columns in ``classes`` order (0 for classes the model never saw)."""
    proba = pipe.predict_proba(X)
    out = np.zeros((len(X), len(classes)), dtype=np.float64)
    index = {c: i for i, c in enumerate(classes)}
    for j, label in enumerate(pipe.classes_):
        out[:, index[str(label)]] = proba[:, j]
    return out


# -- cross-validation ------------------------------------------------------------------
@dataclass
class Evaluation:
    """Out-of-fold predictions of one head and what happened in each fold."""

    classes: list[str]
    proba: np.ndarray  # (n, n_classes); NaN rows were never tested
    pred: np.ndarray  # object array; None where never tested
    fold: np.ndarray  # test fold of each row, -1 never tested
    folds: list[dict]
    decided: dict
    fit_seconds: float
    predict_seconds: float

    @property
    def tested(self) -> np.ndarray:
        return self.fold >= 0


def cross_evaluate(X: np.ndarray, y: np.ndarray, *, clf: str, splits: Splits, groups: np.ndarray | None = None,
                   settings: EvalSettings = EvalSettings(), progress=None) -> Evaluation:
    """Fit and tune ``clf`` on each training fold; predict its test fold."""
    classes = sorted(set(y.tolist()))
    proba = np.full((len(y), len(classes)), np.nan)
    pred = np.full(len(y), None, dtype=object)
    fold_of = np.full(len(y), -1, dtype=np.int64)
    folds, decided = [], {}
    fit_seconds = predict_seconds = 0.0
    for k, (train, test) in enumerate(splits.folds):
        pipe, decided = build_head(clf, y[train], n_features=X.shape[1], settings=settings)
        start = time.perf_counter()
        fitted, chosen, detail = tune_and_fit(clf, pipe, X=X[train], y=y[train],
                                              groups=None if groups is None else groups[train], settings=settings)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        p = aligned_proba(fitted, X[test], classes)
        predict_s = time.perf_counter() - start
        proba[test] = p
        pred[test] = np.asarray(classes, dtype=object)[p.argmax(axis=1)]
        fold_of[test] = k
        fit_seconds += fit_s
        predict_seconds += predict_s
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fold_bal = float(balanced_accuracy_score(y[test].astype(str), pred[test].astype(str)))
        folds.append({"fold": k, "n_train": int(len(train)), "n_test": int(len(test)), "params": chosen,
                      "tuning": detail, "balanced_accuracy": round(fold_bal, 4), "fit_seconds": round(fit_s, 3),
                      "predict_seconds": round(predict_s, 4)})
        if progress is not None:
            progress(k + 1, len(splits.folds))
    return Evaluation(classes, proba, pred, fold_of, folds, decided, fit_seconds, predict_seconds)


def out_of_fold_proba(
    X: np.ndarray,
    y: Sequence[str],
    groups: Sequence | None = None,
    *,
    clf: str = "logreg",
    cv: int = 5,
    seed: int = 0,
    rebalance: str = "auto",
    pca: int | None = None,
    params: Mapping[str, Sequence] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Probabilities for every row from a model that never saw it (label-issue finding).

    Folds are group-aware when ``groups`` is given; hyperparameters are tuned inside each
    training fold. Every row is predicted exactly once; a class absent from a training
    fold gets probability 0 there. Returns ``(proba (n, n_classes), classes)``.
    """
    X = np.asarray(X, dtype=np.float32)
    y = check_labels(y)
    if len(X) != len(y):
        raise FeatkitError(f"X has {len(X)} rows but y has {len(y)} labels")
    if len(set(y.tolist())) < 2:
        raise FeatkitError(f"a classifier needs at least 2 classes; labels hold only {sorted(set(y.tolist()))}")
    groups_arr = None if groups is None else np.asarray(groups, dtype=object)
    settings = EvalSettings(cv=cv, seed=seed, rebalance=rebalance, pca=pca,
                            params={k: tuple(v) if isinstance(v, (list, tuple)) else (v,)
                                    for k, v in (params or {}).items()})
    splits = evaluation_splits(y, groups_arr, cv=cv, mode="group" if groups_arr is not None else "stratified",
                               seed=seed)
    result = cross_evaluate(X, y, clf=clf, splits=splits, groups=groups_arr, settings=settings)
    return result.proba, result.classes


__all__ = [
    "EvalSettings", "Evaluation", "aligned_proba", "build_head", "compute_metrics", "cross_evaluate",
    "out_of_fold_proba", "resolve_pca", "tune_and_fit",
]
