"""Calibrated probabilities, chosen and fitted out of fold, and how far they can be trusted.

A head's calibrator is fitted on *out-of-fold* responses of its training rows — the
decision values (or probabilities) that the inner-search models gave the rows they
did not train on — never on rows it is later scored on. That is what scikit-learn's
``CalibratedClassifierCV(cv=<inner folds>, ensemble=False)`` builds, and
:func:`calibrated` builds exactly that object (sklearn's own calibrators:
``_SigmoidCalibration``, ``IsotonicRegression``, ``_TemperatureScaling``) from
responses the inner search already computed, instead of refitting the head k more
times. sklearn 1.9.1 is pinned; :func:`calibrated` uses its ``_fit_calibrator``.

:func:`choose_calibration` picks the method: each candidate is fitted on one half of
the out-of-fold rows and scored on the other (and the other way round), and the one
with the lowest expected calibration error wins, among those that cost at most
:data:`MAX_BALANCED_ACCURACY_LOSS` balanced accuracy (sigmoid and isotonic calibrate
each class on its own and can move decisions; temperature scaling never does).
Calibrators are fitted on the rows as they are, unweighted: the probabilities say how
often a prediction is right on data like the collection's. The one exception is the base
of a rebalanced head without probabilities of its own (linsvc's sigmoid), fitted with
balanced row weights so that it decides as the head does (``base_weight``).

The rest measures trust: :func:`expected_calibration_error` (top-label ECE, 15 equal
bins), :func:`reliability` (the diagram's bins), :func:`risk_coverage` (kept
predictions and their precision as the confidence threshold rises) and
:func:`review_threshold` (the lowest confidence at which the kept predictions reach a
target precision).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV, _fit_calibrator
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils.metaestimators import available_if

ECE_BINS = 15  # Guo et al. 2017
MAX_BALANCED_ACCURACY_LOSS = 0.01  # a calibration may cost at most this much balanced accuracy to be chosen
MIN_ROWS = 40  # fewer out-of-fold rows than this: too few to choose between calibrations
METHODS = ("none", "temperature", "sigmoid", "isotonic")  # in order of preference on ties
RISK_THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
REVIEW_PRECISIONS = (0.8, 0.9, 0.95, 0.99)


# -- responses -------------------------------------------------------------------------
def response(estimator, X: np.ndarray) -> np.ndarray:
    """What a calibrator reads: ``decision_function``, else ``predict_proba``; binary: one column (positive)."""
    if hasattr(estimator, "decision_function"):
        scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
        return scores.reshape(-1, 1) if scores.ndim == 1 else scores
    proba = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    return proba[:, 1:] if proba.shape[1] == 2 else proba


def response_labels(scores: np.ndarray, classes: Sequence[str], *, decision: bool) -> np.ndarray:
    """The class each row of :func:`response` output predicts."""
    classes = np.asarray(classes, dtype=object)
    if scores.shape[1] == 1:
        return classes[(scores[:, 0] > (0.0 if decision else 0.5)).astype(int)]
    return classes[scores.argmax(axis=1)]


# -- fitting -----------------------------------------------------------------------------
def calibrated(fitted, scores: np.ndarray, y: np.ndarray, method: str,
               sample_weight: np.ndarray | None = None) -> Any:
    """``fitted`` with ``method`` calibrators fitted on out-of-fold ``scores`` of rows labelled ``y``.

    ``method`` "none" returns ``fitted`` itself. The result is a fitted
    ``CalibratedClassifierCV`` around the frozen ``fitted``, as ``ensemble=False`` builds it.
    """
    if method == "none":
        return fitted
    classes = np.asarray(fitted.classes_)
    target = np.searchsorted(classes, y) if method == "temperature" else np.asarray(y)  # temperature: encoded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # isotonic/sigmoid on a class with no positives here
        pair = _fit_calibrator(fitted, scores, target, classes, method, np, sample_weight=sample_weight)
    model = CalibratedClassifierCV(FrozenEstimator(fitted), method=method, ensemble=False)
    model.calibrated_classifiers_ = [pair]
    model.classes_ = classes
    if hasattr(fitted, "n_features_in_"):
        model.n_features_in_ = fitted.n_features_in_
    return model


def _probabilities(method: str, scores: np.ndarray, own_proba: np.ndarray | None, *, decision: bool,
                   classes: np.ndarray, fit_rows: np.ndarray, y_fit: np.ndarray,
                   weight: np.ndarray | None) -> np.ndarray:
    """Probabilities of every row from a ``method`` calibrator fitted on ``fit_rows`` only."""
    if method == "none":
        return own_proba
    return calibrated(_Responses(classes, decision), scores[fit_rows], y_fit, method,
                      None if weight is None else weight[fit_rows]).predict_proba(scores)


class _Responses(ClassifierMixin, BaseEstimator):
    """A "classifier" whose response is its input: sklearn's calibrators run on stored out-of-fold responses."""

    def __init__(self, classes: np.ndarray, decision: bool):
        self.classes = classes
        self.decision = decision

    @property
    def classes_(self) -> np.ndarray:
        return self.classes

    @available_if(lambda self: self.decision)
    def decision_function(self, X):
        return X[:, 0] if X.shape[1] == 1 else X

    @available_if(lambda self: not self.decision)
    def predict_proba(self, X):
        return np.hstack([1 - X, X]) if X.shape[1] == 1 else X


def choose_calibration(scores: np.ndarray, y: np.ndarray, *, decision: bool, own_proba: np.ndarray | None,
                       base: str, candidates: Sequence[str], classes: np.ndarray,
                       base_weight: np.ndarray | None,
                       halves: list[tuple[np.ndarray, np.ndarray]] | None) -> dict:
    """The calibration method for out-of-fold ``scores`` of rows labelled ``y`` (see the module docstring).

    ``decision``: the scores are decision values (else probabilities); ``own_proba``: the
    head's own probabilities of those rows (None when it has none);
    ``base``: the method that stands for "uncalibrated" ("none", or "sigmoid" for a head
    without probabilities); ``halves``: two (fit, score) splits of the rows, group-aware
    where the rows are grouped (None: too few rows to split); ``classes``: the head's
    (some may be absent from these rows); ``base_weight``: row weights for the base
    calibrator (see :func:`featkit.evaluate.calibrate`). Returns ``{"method", "why",
    "cross_fitted": {method: {"ece", "balanced_accuracy"}}}``.
    """
    if len(candidates) == 1:
        return {"method": candidates[0], "why": f"{candidates[0]} (as requested)", "cross_fitted": {}}
    if halves is None or len(y) < MIN_ROWS:
        return {"method": base, "why": f"{base}: {len(y)} out-of-fold rows are too few to choose a calibration",
                "cross_fitted": {}}
    y_idx = np.searchsorted(classes, y)
    results = {}
    for method in candidates:
        proba = np.zeros((len(y), len(classes)))
        for fit_rows, score_rows in halves:
            proba[score_rows] = _probabilities(method, scores, own_proba, decision=decision, classes=classes,
                                               fit_rows=fit_rows, y_fit=y[fit_rows],
                                               weight=base_weight if method == base else None)[score_rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a class of the head absent from these rows
            bal = float(balanced_accuracy_score(y_idx, proba.argmax(1)))
        results[method] = {"ece": round(expected_calibration_error(proba, y_idx), 4), "balanced_accuracy": round(bal, 4)}
    floor = results[base]["balanced_accuracy"] - MAX_BALANCED_ACCURACY_LOSS
    allowed = [m for m in candidates if results[m]["balanced_accuracy"] >= floor]
    method = min(allowed, key=lambda m: (results[m]["ece"], METHODS.index(m)))
    refused = [m for m in candidates if m not in allowed]
    why = (f"{method}: lowest ECE on half the out-of-fold rows when fitted on the other half "
           f"({results[method]['ece']:.3f}; {base} {results[base]['ece']:.3f})")
    if refused:
        why += f"; {', '.join(refused)} left out: {'they lower' if len(refused) > 1 else 'it lowers'} balanced accuracy"
    return {"method": method, "why": why, "cross_fitted": results}


# -- trust -------------------------------------------------------------------------------
def confidence_and_correct(proba: np.ndarray, y_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-class probability of each row, and whether that class is the true one."""
    return proba.max(axis=1), proba.argmax(axis=1) == y_idx


def expected_calibration_error(proba: np.ndarray, y_idx: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: Σ_b (n_b / n) |accuracy_b − confidence_b| over equal-width confidence bins."""
    rows = reliability(proba, y_idx, bins)
    n = sum(r["n"] for r in rows)
    return float(sum(r["n"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / max(1, n))


def reliability(proba: np.ndarray, y_idx: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Non-empty confidence bins: range, rows, mean confidence, accuracy (the reliability diagram)."""
    confidence, correct = confidence_and_correct(proba, y_idx)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            out.append({"low": round(b / bins, 4), "high": round((b + 1) / bins, 4), "n": int(inside.sum()),
                        "confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].mean())})
    return out


def risk_coverage(confidence: np.ndarray, correct: np.ndarray,
                  thresholds: Sequence[float] = RISK_THRESHOLDS) -> list[dict]:
    """Per threshold: predictions kept (confidence ≥ threshold), their share, and the share of them that is right."""
    out = []
    for t in thresholds:
        kept = confidence >= t
        n = int(kept.sum())
        out.append({"threshold": t, "kept": n, "coverage": round(n / max(1, len(confidence)), 4),
                    "precision": round(float(correct[kept].mean()), 4) if n else None})
    return out


def review_threshold(confidence: np.ndarray, correct: np.ndarray, min_precision: float) -> dict:
    """The lowest confidence at which the predictions kept (confidence ≥ it) are right at least ``min_precision``.

    Below it a prediction needs review. ``threshold`` is None when no confidence reaches
    the target: then every prediction needs review.
    """
    n = len(confidence)
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.cumsum(correct[order])
    last_of_value = np.r_[conf[1:] != conf[:-1], True]  # keep every row tied at a threshold together
    kept = np.arange(1, n + 1)[last_of_value]
    precision = hits[last_of_value] / kept
    reach = np.flatnonzero(precision >= min_precision)
    block = {"min_precision": min_precision, "n": int(n)}
    if not len(reach):
        return {**block, "threshold": None, "kept": 0, "coverage": 0.0, "precision_kept": None, "sent_to_review": n,
                "reached": False}
    best = reach[-1]  # the most rows kept (lowest confidence) that still reach the target
    k = int(kept[best])
    return {**block, "threshold": float(conf[last_of_value][best]), "kept": k,
            "coverage": round(k / n, 4), "precision_kept": round(float(precision[best]), 4),
            "sent_to_review": n - k, "reached": True}
