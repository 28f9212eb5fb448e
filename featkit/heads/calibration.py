"""Calibrated probabilities for heads that have none (LinearSVC), weighted like their classifier."""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.utils.class_weight import compute_sample_weight


class BalancedCalibratedClassifierCV(CalibratedClassifierCV):
    """``CalibratedClassifierCV`` whose calibration weighs classes like its classifier.

    sklearn fits the sigmoid calibrators on raw class frequencies, which undoes
    ``class_weight="balanced"``: measured on clothing ``kids`` (1:10), calibrated
    LinearSVC predicted the majority class almost always (balanced accuracy 0.53 vs
    logreg's 0.72). With ``balanced=True`` the classifier *and* the calibrators are
    fitted with inverse-frequency sample weights, so the probabilities are posteriors
    under equal class priors — what logistic regression with class weights gives.
    """

    _parameter_constraints: dict = {**CalibratedClassifierCV._parameter_constraints, "balanced": ["boolean"]}

    def __init__(self, estimator=None, *, method="sigmoid", cv=None, n_jobs=None, ensemble="auto",
                 balanced: bool = False):
        super().__init__(estimator, method=method, cv=cv, n_jobs=n_jobs, ensemble=ensemble)
        self.balanced = balanced

    def fit(self, X, y, sample_weight=None, **fit_params):
        if self.balanced and y is not None:  # without y, let sklearn say y is required
            weights = compute_sample_weight("balanced", np.asarray(y))
            sample_weight = weights if sample_weight is None else np.asarray(sample_weight) * weights
        return super().fit(X, y, sample_weight=sample_weight, **fit_params)
