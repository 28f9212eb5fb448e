"""The built-in heads (logreg, linsvc, lgbm) and samplers (oversample, smote, undersample).

Defaults are chosen for frozen CNN embeddings (hundreds to thousands of dense,
correlated dimensions, hundreds to tens of thousands of rows):

* ``logreg`` — multinomial logistic regression (lbfgs) on standardised features; C by
  inner CV along a warm-started path.
* ``linsvc`` — a one-vs-rest squared-hinge linear SVM solved in the primal by L-BFGS
  (:mod:`featkit.heads.svm`: liblinear is 8–40x slower on dense embeddings); C by inner
  CV along a warm-started path. It has no probabilities of its own: they come from a
  calibrator fitted on out-of-fold decision values (sigmoid unless another calibrates
  better, see :mod:`featkit.heads.calibration`).
* ``lgbm`` — LightGBM made fast on wide embeddings: PCA to 128 components inside the
  pipeline when the embedding is wider than 256, 63 histogram bins, half the columns
  per tree, shallow trees (15 leaves), column-wise histograms, and the number of
  rounds chosen by early stopping on a validation split of the training data.

Every head runs one thread unless ``--jobs`` asks for more. On a shared or busy
machine spinning threads cost far more than they give: LightGBM with two OpenMP
threads ran 28x slower than with one (0.3 s vs 8.8 s for 100 rounds), and a logreg fit
on one clothing fold (4,240 x 1,280, 20 classes) with two OpenBLAS threads used 10.1
CPU seconds and 83 s of wall time against 0.6 s and 10 s with one (load average 9 on
2 cores).
"""

from __future__ import annotations

from featkit.heads.registry import HeadSpec, register_head, register_sampler


# Builders import their library when a head is built: registering the heads (and listing
# them in `featkit --help`) imports no sklearn or LightGBM.
def _logreg(params: dict, *, class_weight, seed: int, n_jobs: int | None):
    from sklearn.linear_model import LogisticRegression

    # warm_start: the C search and the refit resume from the solution at the previous C or fold
    return LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]), tol=float(params["tol"]),
                              class_weight=class_weight, random_state=seed, warm_start=True)


def _linsvc(params: dict, *, class_weight, seed: int, n_jobs: int | None):
    from featkit.heads.svm import PrimalLinearSVC

    return PrimalLinearSVC(C=float(params["C"]), max_iter=int(params["max_iter"]), tol=float(params["tol"]),
                           class_weight=class_weight, warm_start=True)


def _lgbm(params: dict, *, class_weight, seed: int, n_jobs: int | None):
    from lightgbm import LGBMClassifier

    return LGBMClassifier(
        n_estimators=int(params["n_estimators"]),
        learning_rate=float(params["learning_rate"]),
        num_leaves=int(params["num_leaves"]),
        min_child_samples=int(params["min_child_samples"]),
        max_bin=int(params["max_bin"]),
        colsample_bytree=float(params["colsample_bytree"]),
        subsample=float(params["subsample"]),
        subsample_freq=1 if float(params["subsample"]) < 1 else 0,
        reg_lambda=float(params["reg_lambda"]),
        class_weight=class_weight,
        force_col_wise=True,
        n_jobs=n_jobs or 1,  # see the module docstring: one thread unless asked
        random_state=seed,
        verbose=-1,
    )


register_head(HeadSpec(
    name="logreg",
    description="logistic regression (lbfgs, multinomial); C by inner CV",
    build=_logreg,
    defaults={"max_iter": 500, "tol": 1e-3},
    # standardised 1k-2k-d embeddings want strong regularisation: all 5 clothing folds chose 1e-3 from
    # 1e-4..1e-1; the grid grows by factors of 10 when the best value is at an edge
    grid={"C": (0.0001, 0.001, 0.01)},
    param_prefix="clf__",
    path="C",
))

register_head(HeadSpec(
    name="linsvc",
    description="linear SVM (one-vs-rest, squared hinge, primal L-BFGS), calibrated out of fold; C by inner CV",
    build=_linsvc,
    # tol is relative to the gradient at zero. On one clothing training fold (4,240 x 1,280, 20 classes) along
    # the C path 1e-5..1e-2: 1e-3 took 46/67/92/81 L-BFGS iterations for balanced accuracy 0.570/0.594/0.591/0.525
    # on the fold's test rows, 1e-2 took 26/20/25/- for 0.577/0.605/0.585/-. Whole clothing fit (5 grouped folds,
    # search, calibration, refit; timed as benchmarks/bench_heads.py does): tol 3e-3 26.4 s, balanced accuracy 0.589; 1e-2 16.5 s, 0.585,
    # against logreg's 19.0 s, 0.584 in the same session.
    defaults={"max_iter": 1000, "tol": 1e-2},
    grid={"C": (0.00001, 0.0001, 0.001)},  # clothing fold: 1e-5 0.570, 1e-4 0.595, 1e-3 0.592, 1e-2 0.523
    param_prefix="clf__",
    path="C",
    base_calibration="sigmoid",
))

register_head(HeadSpec(
    name="lgbm",
    description="LightGBM on PCA-reduced embeddings; rounds by early stopping on a validation split",
    build=_lgbm,
    defaults={"n_estimators": 1000, "learning_rate": 0.1, "num_leaves": 15, "min_child_samples": 10,
              "max_bin": 63, "colsample_bytree": 0.5, "subsample": 0.8, "reg_lambda": 1.0},
    grid={},  # num_leaves etc. are searched when given as lists, e.g. --param num_leaves=7,15,31
    tuning="early_stopping",
    param_prefix="clf__",
    default_pca=128,
))


def _smote_k(smallest_class: int | None) -> int:
    """k for SMOTE that the smallest class can still afford inside nested training folds."""
    if smallest_class is None:
        return 5
    return max(1, min(5, smallest_class // 2 - 1))


def _oversample(*, seed: int, smallest_class: int | None):
    from imblearn.over_sampling import RandomOverSampler

    return RandomOverSampler(random_state=seed)


def _smote(*, seed: int, smallest_class: int | None):
    from imblearn.over_sampling import SMOTE

    return SMOTE(k_neighbors=_smote_k(smallest_class), random_state=seed)


def _undersample(*, seed: int, smallest_class: int | None):
    from imblearn.under_sampling import RandomUnderSampler

    return RandomUnderSampler(random_state=seed)


register_sampler("oversample", _oversample)
register_sampler("smote", _smote)
register_sampler("undersample", _undersample)
