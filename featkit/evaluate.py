"""Honest evaluation of a head: hyperparameters and calibration chosen inside training data, metrics.

* **Splits** come from :mod:`featkit.data.splits` (split column, else group-aware folds).
* **Tuning** (:func:`tune`): hyperparameters are chosen on the training rows of each
  fold only — inner cross-validation for grids, early stopping on a validation split of
  the training rows for boosting rounds. The inner splits are group-aware too, and
  shrink when a class has fewer rows than folds. The C of the linear heads is searched
  in rising order with warm starts (each fit resumes from the previous C's solution on
  the same rows; never from another fold's, which saw rows this one is scored on), and
  a best value at the edge of the
  head's grid grows the grid by factors of 10 (a grid given with ``--param`` is kept,
  with a warning naming the flag).
* **Calibration** (:func:`calibrate`): calibrators are fitted on the out-of-fold
  responses the search already made, and chosen by ECE (:mod:`featkit.heads.calibration`).
* **Metrics** (:func:`compute_metrics`): accuracy, balanced accuracy, macro-F1, per-class
  precision/recall/F1/support and the confusion matrix, on pooled out-of-fold predictions.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, log_loss,
                             precision_recall_fscore_support)
from sklearn.model_selection import ParameterGrid
from sklearn.utils.class_weight import compute_sample_weight
from threadpoolctl import threadpool_limits

from featkit.data.splits import (SPLIT_MODES, Splits, check_labels, class_counts, evaluation_splits, inner_splits,
                                 validation_split)
from featkit.errors import FeatkitError, choices_message
from featkit.heads.calibration import METHODS as CALIBRATION_METHODS
from featkit.heads.calibration import calibrated, choose_calibration, response, response_labels
from featkit.heads.registry import CALIBRATIONS, HeadSpec, create_head, get_head_spec, resolve_rebalance


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
    n_jobs: int | None = None  # threads (default 1: see featkit.heads.builtin)
    validation_fraction: float = 0.2  # early stopping: share of training rows held out
    stopping_rounds: int = 30
    calibration: str = "auto"  # auto (chosen by ECE out of fold) | none | temperature | sigmoid | isotonic
    # what the inner search maximises: balanced accuracy (fit), or the log-likelihood of the held-out labels
    # (label issues: confident learning reads the probabilities, not the decisions)
    tune_by: str = "balanced_accuracy"

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
        if self.calibration not in CALIBRATIONS:
            raise FeatkitError(choices_message("calibration", self.calibration, CALIBRATIONS))
        if self.tune_by not in TUNE_BY:
            raise FeatkitError(choices_message("tuning score", self.tune_by, TUNE_BY))


# -- tuning ----------------------------------------------------------------------------
TUNE_BY = {"balanced_accuracy": "balanced accuracy", "log_likelihood": "log-likelihood of the held-out labels"}


def _inner_score(tune_by: str, y_true: np.ndarray, labels: np.ndarray, proba: np.ndarray | None,
                 classes: np.ndarray) -> float:
    """Higher is better. log_likelihood: mean log-probability of the true labels (sklearn's log_loss,
    negated) over the rows whose class the fit saw; a head without probabilities is scored on its labels."""
    if tune_by == "log_likelihood" and proba is not None:
        seen = np.isin(y_true, classes)
        return -float(log_loss(y_true[seen], proba[seen], labels=classes))
    return float(balanced_accuracy_score(y_true, labels))


@dataclass
class OutOfFold:
    """Responses of training rows from models that did not train on them (the inner search's), for calibration."""

    rows: np.ndarray  # positions in the training rows
    scores: np.ndarray  # decision values, else probabilities, as a calibrator reads them (binary: one column)
    proba: np.ndarray | None  # the head's own probabilities of those rows (None: it has none)
    decision: bool  # scores are decision values


@dataclass
class Tuned:
    """A pipeline fitted on training rows with hyperparameters chosen inside them."""

    pipeline: Any
    params: dict
    detail: dict
    oof: OutOfFold | None = None  # None: no row was held out (everything fixed and no calibration asked for)
    warnings: list[str] = field(default_factory=list)


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
    searched = {k: sorted(v) for k, v in merged.items() if len(v) > 1}
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


def _clf_params(spec: HeadSpec, params: Mapping[str, Any]) -> dict:
    """``params`` addressed to the classifier step itself (the pipeline's prefix without ``clf__``)."""
    inner = spec.param_prefix[len("clf__"):]
    return {inner + k: v for k, v in params.items()}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _middle(searched: Mapping[str, list]) -> dict:
    return {k: v[len(v) // 2] for k, v in searched.items()}


def _inner_folds(y: np.ndarray, groups: np.ndarray | None, *, k: int, seed: int) -> tuple[list, str]:
    """Inner folds of training rows whose training part holds every class, and a note when they had to shrink.

    ``k`` shrinks to the smallest class's row count; no folds (and the reason) when fewer than two remain.
    """
    counts = class_counts(y)
    smallest = min(counts, key=counts.get)
    k_used = min(k, counts[smallest])
    if k_used < 2:
        return [], (f"class {smallest!r} has {counts[smallest]} row here, too few to hold any out for choosing "
                    "hyperparameters")
    classes = set(counts)
    folds = [(a, b) for a, b in inner_splits(y, groups, k=k_used, seed=seed) if set(y[a].tolist()) == classes]
    if len(folds) < 2:
        return [], (f"no {k_used} inner folds keep every class in training (class {smallest!r}: "
                    f"{counts[smallest]} rows{', grouped' if groups is not None else ''})")
    note = "" if k_used == k else f"inner folds shrunk from {k} to {k_used}: class {smallest!r} has {counts[smallest]} rows"
    if len(folds) < k_used:
        note = "; ".join(filter(None, [note, f"{k_used - len(folds)} of {k_used} inner folds left out: their "
                                              "training part lacked a class"]))
    return folds, note


def _edge_flag(name: str, value, values: list, *, extend: bool) -> str | None:
    """A warning when ``value`` sits at an edge of ``values`` (None inside), naming the flag that widens it."""
    if len(values) < 2 or value not in (values[0], values[-1]):
        return None
    low = value == values[0]
    step = values[1] / values[0] if low else values[-1] / values[-2]
    wider = ([values[0] / step ** 2, values[0] / step] + values if low else values + [values[-1] * step,
                                                                                    values[-1] * step ** 2])
    if all(isinstance(v, (int, np.integer)) for v in values):
        wider = sorted({max(1, int(round(v))) for v in wider})
    why = "the search range ends there" if extend else "the grid was given with --param"
    return (f"{name}={value:g} is the {'lowest' if low else 'highest'} value searched ({why}); the best may lie "
            f"beyond it: search wider with --param {name}={','.join(f'{v:g}' for v in wider)}")


def _tune_grid(spec: HeadSpec, pipe, X, y, groups, *, fixed, searched, settings, need_oof) -> Tuned:
    """Inner CV over ``searched``; the path hyperparameter (C) in rising order with warm starts, grown at an edge."""
    if not searched and not need_oof:
        return Tuned(pipe.fit(X, y), dict(fixed), {"method": "none (all hyperparameters fixed)"})
    folds, note = _inner_folds(y, groups, k=settings.inner_cv, seed=settings.seed)
    if not folds:
        chosen = {**fixed, **_middle(searched)}
        fitted = pipe.set_params(**_prefixed(spec, chosen)).fit(X, y)
        used = f"; used {_middle(searched)} (the middle of the grid)" if searched else ""
        return Tuned(fitted, chosen, {"method": f"none: {note}{used}"},
                     warnings=[f"{spec.name}: {note}{used}"] if searched else [])
    prepared = []
    for a, b in folds:
        prep = clone(pipe)
        Xa, ya = _fit_steps(prep, X[a], y[a])
        prepared.append((prep.steps[-1][1], Xa, ya, _transform_steps(prep, X[b]), b))
    path = spec.path if spec.path in searched else None
    grown = path is not None and path not in settings.params  # the head's own grid grows at an edge
    others = list(ParameterGrid({k: v for k, v in searched.items() if k != path}))  # [{}] when C is all
    results: dict[tuple, dict] = {}
    # Warm starts never carry rows across folds: in each inner fold a fit resumes from the previous C's
    # solution on the same rows (the path), and the refit on all rows from the best C's inner solution.
    # Resuming from another inner fold's solution leaked that fold's rows (this fold's validation rows) into
    # fits that stop early, which then looked better the less they were regularised (measured: linsvc at
    # tol 1e-2 drifted to C=0.01..1, balanced accuracy 0.590 -> 0.537; across outer folds logreg's test
    # rows leaked: 0.585 -> 0.641).
    warm: dict[tuple, tuple] = {}  # each candidate's solution in the last inner fold: where the refit starts

    def key(candidate: dict) -> tuple:
        return tuple(sorted(candidate.items()))

    def evaluate(candidates: list[dict]) -> None:
        for clf, Xa, ya, Xb, b in prepared:
            for candidate in candidates:
                clf.set_params(**_clf_params(spec, candidate))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    clf.fit(Xa, ya)
                if getattr(clf, "warm_start", False):
                    warm[key(candidate)] = (clf.coef_.copy(), clf.intercept_.copy())
                scores = response(clf, Xb)
                decision = hasattr(clf, "decision_function")
                labels = response_labels(scores, clf.classes_, decision=decision)
                entry = results.setdefault(key(candidate), {"candidate": candidate, "fold_scores": [],
                                                            "parts": [], "decision": decision})
                own = clf.predict_proba(Xb) if hasattr(clf, "predict_proba") else None
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a class absent from a small validation part
                    entry["fold_scores"].append(_inner_score(settings.tune_by, y[b], labels, own, clf.classes_))
                entry["parts"].append((b, scores, own))

    def ordered(values: list) -> list[dict]:
        return [{**o, **({path: v} if path else {})} for o in others for v in (values if path else [None])]

    values = list(searched.get(path, [])) if path else []
    evaluate(ordered(values) if path else others)
    extended = []
    while True:
        best = max(results.values(), key=lambda r: np.mean(r["fold_scores"]))
        if not grown:
            break
        value = best["candidate"][path]
        low, high = value == values[0], value == values[-1]
        lo_limit, hi_limit = spec.path_limits
        nxt = values[0] / 10 if low else values[-1] * 10 if high else None
        if nxt is None or not lo_limit * 0.999 <= nxt <= hi_limit * 1.001 or len(extended) >= 3:
            break
        values = sorted(values + [nxt])
        extended.append(nxt)
        evaluate([{**{k: v for k, v in best["candidate"].items() if k != path}, path: nxt}])
    chosen = {**fixed, **{k: _plain(v) for k, v in best["candidate"].items()}}
    found = []
    for name in searched:
        tried = sorted({r["candidate"][name] for r in results.values()})
        flag = _edge_flag(name, chosen[name], tried, extend=name == path and grown)
        if flag and not (name == path and grown and len(extended) < 3 and
                         spec.path_limits[0] < chosen[name] < spec.path_limits[1]):
            found.append(flag)
    pipe.set_params(**_prefixed(spec, chosen))
    clf = pipe.steps[-1][1]
    if key(best["candidate"]) in warm and getattr(clf, "warm_start", False):
        clf.coef_, clf.intercept_ = warm[key(best["candidate"])]
    fitted = pipe.fit(X, y)
    rows = np.concatenate([b for b, _, _ in best["parts"]])
    own = [p for _, _, p in best["parts"]]
    oof = OutOfFold(rows=rows, scores=np.vstack([s for _, s, _ in best["parts"]]),
                    proba=None if own[0] is None else np.vstack(own), decision=best["decision"])
    k_used = len(prepared)
    detail = {"method": f"inner {k_used}-fold CV on the training rows{' (group-aware)' if groups is not None else ''}, "
                        + TUNE_BY[settings.tune_by] + (f"; {path} along a warm-started path" if path else ""),
              "inner_folds": k_used,
              "searched": {n: sorted({_plain(r["candidate"][n]) for r in results.values()}) for n in searched},
              "inner_scores": [{**{k: _plain(v) for k, v in r["candidate"].items()},
                                "score": round(float(np.mean(r["fold_scores"])), 4),
                                "std": round(float(np.std(r["fold_scores"])), 4)}
                               for r in sorted(results.values(), key=lambda r: key(r["candidate"]))]}
    if extended:
        detail["extended"] = (f"{path}: the best value sat at an edge of the grid, so the search went on to "
                              f"{', '.join(f'{v:g}' for v in extended)}")
    if note:
        detail["note"] = note
    return Tuned(fitted, chosen, detail, oof, found)


def _tune_early_stopping(spec: HeadSpec, pipe, X, y, groups, *, fixed, searched, settings, need_oof) -> Tuned:
    """Boosting rounds (and any searched lists) on a group-aware validation split of the training rows, then a refit."""
    import lightgbm

    rounds_fixed = len(settings.params.get("n_estimators", ())) == 1
    limit = int(pipe.steps[-1][1].get_params()["n_estimators"])
    if rounds_fixed and not searched and not need_oof:
        return Tuned(pipe.fit(X, y), dict(fixed), {"method": "none (rounds fixed by the user)"})
    counts = class_counts(y)
    smallest = min(counts, key=counts.get)
    k = min(max(2, round(1 / settings.validation_fraction)), counts[smallest])  # a validation split is 1/k of the rows
    if k < 2:
        chosen = {**fixed, **_middle(searched)}
        why = (f"class {smallest!r} has {counts[smallest]} row here, too few for a validation split; used "
               f"{chosen.get('n_estimators', limit)} rounds" + (f" and {_middle(searched)}" if searched else ""))
        return Tuned(pipe.set_params(**_prefixed(spec, chosen)).fit(X, y), chosen, {"method": f"none: {why}"},
                     warnings=[f"{spec.name}: {why}"])
    train, val = validation_split(y, groups, fraction=1 / k, seed=settings.seed)
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
        proba = clf.predict_proba(Xv, num_iteration=rounds)
        score = float(balanced_accuracy_score(y[val], clf.classes_[proba.argmax(axis=1)]))
        tried.append({**{k: _plain(v) for k, v in candidate.items()}, "rounds": rounds,
                      "val_balanced_accuracy": round(score, 4)})
        if best is None or score > best[0]:
            best = (score, candidate, rounds, proba)
    _, candidate, rounds, proba = best
    final_rounds = rounds if rounds_fixed else max(1, int(round(rounds * len(y) / max(1, len(train)))))
    chosen = {**fixed, **{k: _plain(v) for k, v in candidate.items()}, "n_estimators": final_rounds}
    fitted = pipe.set_params(**_prefixed(spec, chosen)).fit(X, y)
    how = (f"{rounds} rounds (fixed)" if rounds_fixed else
           f"early stopping ({settings.stopping_rounds} rounds patience): best {rounds} rounds, refit with "
           f"{final_rounds} (scaled by rows)")
    detail = {"method": (f"validation split of the training rows ({len(val)} rows), balanced accuracy; {how}; "
                         f"refit on all {len(y)} training rows"), "tried": tried}
    if k < round(1 / settings.validation_fraction):
        detail["note"] = (f"validation split grown to 1/{k} of the rows: class {smallest!r} has "
                          f"{counts[smallest]} rows here")
    found = [flag for name in searched
             if (flag := _edge_flag(name, candidate[name], sorted(searched[name]), extend=False))]
    if not rounds_fixed and rounds >= limit:
        found.append(f"early stopping never stopped within n_estimators={limit} rounds; the best may need more: "
                     f"--param n_estimators={limit * 3}")
    oof = OutOfFold(rows=val, scores=proba[:, 1:] if proba.shape[1] == 2 else proba, proba=proba, decision=False)
    return Tuned(fitted, chosen, detail, oof, found)


_TUNERS = {"grid": _tune_grid, "early_stopping": _tune_early_stopping}


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


def threads(settings: EvalSettings):
    """BLAS/OpenMP threads for fitting: ``--jobs``, else one (see :mod:`featkit.heads.builtin` for why)."""
    return threadpool_limits(settings.n_jobs or 1)


def tune(clf: str, pipe, *, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, settings: EvalSettings,
         need_oof: bool = True) -> Tuned:
    """Fit ``pipe`` on (X, y), choosing searched hyperparameters inside this data only.

    ``need_oof``: also keep the out-of-fold responses a calibrator is fitted on (the
    inner search's; with everything fixed, inner folds are fitted for them alone) —
    unless ``settings.calibration`` is "none", which needs none.
    """
    spec = get_head_spec(clf)
    fixed, searched = split_params(spec, settings.params)
    need_oof = need_oof and calibration_candidates(clf, settings.calibration)[1] != ["none"]
    try:
        return _TUNERS[spec.tuning](spec, pipe, X, y, groups, fixed=fixed, searched=searched, settings=settings,
                                    need_oof=need_oof)
    except ValueError as err:
        if "n_neighbors" in str(err) or "Expected n_neighbors" in str(err):
            raise FeatkitError(
                f"smote needs more members per class than some training fold has ({err}); "
                "use --rebalance oversample or class_weight"
            ) from None
        raise


def tune_and_fit(clf: str, pipe, *, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                 settings: EvalSettings) -> tuple[Any, dict, dict]:
    """:func:`tune` without calibration: (fitted pipeline, chosen hyperparameters, how they were chosen)."""
    with threads(settings):
        tuned = tune(clf, pipe, X=X, y=y, groups=groups, settings=settings, need_oof=False)
    return tuned.pipeline, tuned.params, tuned.detail


def calibration_candidates(clf: str, calibration: str) -> tuple[str, list[str]]:
    """(the head's uncalibrated map, the methods ``calibration`` lets :func:`calibrate` choose from)."""
    spec = get_head_spec(clf)
    if calibration not in CALIBRATIONS:
        raise FeatkitError(choices_message("calibration", calibration, CALIBRATIONS))
    own = spec.base_calibration == "none"
    if calibration == "none" and not own:
        raise FeatkitError(f"head {clf!r} has no probabilities of its own; --calibration must be one of "
                           f"{', '.join(m for m in CALIBRATIONS if m != 'none')}")
    if calibration == "auto":
        return spec.base_calibration, [m for m in CALIBRATION_METHODS if own or m != "none"]
    return spec.base_calibration, [calibration]


def _base_weight(pipeline, y: np.ndarray) -> np.ndarray | None:
    """Balanced row weights for the base calibrator of a rebalanced head (class weights or a sampler), else None.

    The base stands for the head as it decides: a linsvc with balanced class weights
    whose sigmoid were fitted on raw frequencies predicted the majority almost always
    (clothing ``kids``, 1:10: balanced accuracy 0.54 against 0.72 with weighted sigmoids).
    Other methods are fitted unweighted and must not cost balanced accuracy against it.
    """
    clf = pipeline.steps[-1][1]
    if "sampler" in pipeline.named_steps or clf.get_params().get("class_weight") == "balanced":
        return compute_sample_weight("balanced", y)
    return None


def calibrate(clf: str, tuned: Tuned, *, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
              settings: EvalSettings) -> tuple[Any, dict, dict]:
    """The tuned head with its calibration, chosen and fitted on the out-of-fold rows of the training data.

    Returns (model, how it was chosen, {method: model} for every candidate, for comparing them on test rows).
    """
    base, candidates = calibration_candidates(clf, settings.calibration)
    if candidates == ["none"]:
        return tuned.pipeline, {"method": "none", "why": "none (as requested)", "base": base}, {"none": tuned.pipeline}
    oof = tuned.oof
    if oof is None:  # too few rows for any inner fold
        if base == "none":
            return tuned.pipeline, {"method": "none", "why": "none: too few rows to hold any out for calibration"}, {}
        model = calibrated(tuned.pipeline, response(tuned.pipeline, X), y, base, _base_weight(tuned.pipeline, y))
        return model, {"method": base, "why": f"{base}, fitted on the training rows themselves (too few rows to hold "
                                              "any out): its probabilities are optimistic"}, {}
    y_oof = y[oof.rows]
    halves = None
    if len(set(y_oof.tolist())) > 1 and min(class_counts(y_oof).values()) >= 2:
        halves = inner_splits(y_oof, None if groups is None else groups[oof.rows], k=2, seed=settings.seed)
    weight = _base_weight(tuned.pipeline, y_oof)
    choice = choose_calibration(oof.scores, y_oof, decision=oof.decision, own_proba=oof.proba, base=base,
                                candidates=candidates, classes=np.asarray(tuned.pipeline.classes_),
                                base_weight=weight, halves=halves)
    models = {m: calibrated(tuned.pipeline, oof.scores, y_oof, m, weight if m == base else None)
              for m in dict.fromkeys([base, *candidates])}
    return models[choice["method"]], {**choice, "base": base, "rows": int(len(oof.rows))}, models


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
    proba: np.ndarray  # (n, n_classes), calibrated as each fold chose; NaN rows were never tested
    pred: np.ndarray  # object array; None where never tested
    fold: np.ndarray  # test fold of each row, -1 never tested
    folds: list[dict]
    decided: dict
    fit_seconds: float
    predict_seconds: float
    by_method: dict[str, np.ndarray] = field(default_factory=dict)  # out-of-fold proba of each calibration tried
    base: str = "none"  # the calibration that stands for "uncalibrated"

    @property
    def tested(self) -> np.ndarray:
        return self.fold >= 0


def cross_evaluate(X: np.ndarray, y: np.ndarray, *, clf: str, splits: Splits, groups: np.ndarray | None = None,
                   settings: EvalSettings = EvalSettings(),
                   progress: Callable[[int, int, str], None] | None = None) -> Evaluation:
    """Fit, tune and calibrate ``clf`` on each training fold; predict its test fold.

    ``progress(done, total, message)`` is called after each fold.
    """
    classes = sorted(set(y.tolist()))
    proba = np.full((len(y), len(classes)), np.nan)
    pred = np.full(len(y), None, dtype=object)
    fold_of = np.full(len(y), -1, dtype=np.int64)
    base, candidates = calibration_candidates(clf, settings.calibration)
    by_method = {m: np.full_like(proba, np.nan) for m in dict.fromkeys([base, *candidates])}
    folds, decided = [], {}
    fit_seconds = predict_seconds = 0.0
    with threads(settings):
        for k, (train, test) in enumerate(splits.folds):
            pipe, decided = build_head(clf, y[train], n_features=X.shape[1], settings=settings)
            start = time.perf_counter()
            g_train = None if groups is None else groups[train]
            tuned = tune(clf, pipe, X=X[train], y=y[train], groups=g_train, settings=settings)
            model, calibration, models = calibrate(clf, tuned, X=X[train], y=y[train], groups=g_train,
                                                   settings=settings)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            p = aligned_proba(model, X[test], classes)
            predict_s = time.perf_counter() - start
            for method in by_method:
                by_method[method][test] = aligned_proba(models[method], X[test], classes) if method in models else p
            proba[test] = p
            pred[test] = np.asarray(classes, dtype=object)[p.argmax(axis=1)]
            fold_of[test] = k
            fit_seconds += fit_s
            predict_seconds += predict_s
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fold_bal = float(balanced_accuracy_score(y[test].astype(str), pred[test].astype(str)))
            folds.append({"fold": k, "n_train": int(len(train)), "n_test": int(len(test)), "params": tuned.params,
                          "tuning": tuned.detail, "calibration": calibration, "warnings": tuned.warnings,
                          "balanced_accuracy": round(fold_bal, 4), "fit_seconds": round(fit_s, 3),
                          "predict_seconds": round(predict_s, 4)})
            if progress is not None:
                shown = ", ".join(f"{n}={v:g}" if isinstance(v, float) else f"{n}={v}"
                                  for n, v in tuned.params.items() if n in searched_names(clf, settings))
                progress(k + 1, len(splits.folds),
                         f"fold {k + 1}/{len(splits.folds)}: balanced accuracy {fold_bal:.3f}"
                         f"{'; ' + shown if shown else ''}; calibration {calibration['method']}; {fit_s:.1f} s")
    return Evaluation(classes, proba, pred, fold_of, folds, decided, fit_seconds, predict_seconds, by_method, base)


def searched_names(clf: str, settings: EvalSettings) -> list[str]:
    """The hyperparameters chosen inside training data (early-stopping heads: the rounds too)."""
    spec = get_head_spec(clf)
    names = list(split_params(spec, settings.params)[1])
    return names + ["n_estimators"] if spec.tuning == "early_stopping" else names


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
    calibration: str | None = None,
    tune_by: str = "balanced_accuracy",
) -> tuple[np.ndarray, list[str]]:
    """Probabilities for every row from a model that never saw it (label-issue finding).

    Folds are group-aware when ``groups`` is given; hyperparameters are tuned inside each
    training fold. Every row is predicted exactly once; a class absent from a training
    fold gets probability 0 there. ``calibration`` None: the head's own probabilities
    (linsvc: sigmoid), those label issues were measured with. ``tune_by``: what the inner
    search maximises (``"log_likelihood"``: the held-out labels' probabilities, for callers
    that read probabilities). Returns ``(proba (n, n_classes), classes)``.
    """
    X = np.asarray(X, dtype=np.float32)
    y = check_labels(y)
    if len(X) != len(y):
        raise FeatkitError(f"X has {len(X)} rows but y has {len(y)} labels")
    if len(set(y.tolist())) < 2:
        raise FeatkitError(f"a classifier needs at least 2 classes; labels hold only {sorted(set(y.tolist()))}")
    groups_arr = None if groups is None else np.asarray(groups, dtype=object)
    settings = EvalSettings(cv=cv, seed=seed, rebalance=rebalance, pca=pca,
                            calibration=calibration or get_head_spec(clf).base_calibration, tune_by=tune_by,
                            params={k: tuple(v) if isinstance(v, (list, tuple)) else (v,)
                                    for k, v in (params or {}).items()})
    splits = evaluation_splits(y, groups_arr, cv=cv, mode="group" if groups_arr is not None else "stratified",
                               seed=seed)
    result = cross_evaluate(X, y, clf=clf, splits=splits, groups=groups_arr, settings=settings)
    return result.proba, result.classes


__all__ = [
    "EvalSettings", "Evaluation", "OutOfFold", "Tuned", "aligned_proba", "build_head", "calibrate",
    "calibration_candidates", "compute_metrics", "cross_evaluate", "out_of_fold_proba", "resolve_pca",
    "searched_names", "threads", "tune", "tune_and_fit",
]
