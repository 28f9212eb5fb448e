"""LightGBM on wide embeddings: featkit's lgbm head vs LightGBM defaults, same data, same run.

    .venv/bin/python benchmarks/bench_lgbm.py                       # clothing features if cached, else synthetic
    .venv/bin/python benchmarks/bench_lgbm.py --data synthetic --rows 6000 --dim 1280 --classes 12
    .venv/bin/python benchmarks/bench_lgbm.py --data clothing --store PATH/clothing.h5

Data: ``clothing`` = MobileNetV2 features (1280-d) of the real clothing photos, its 12
largest garment classes, split 80/20 by photographer (``sender_id``); ``synthetic`` =
Gaussian class clusters in a 64-d subspace of ``--dim`` dims, the rest noise, imbalanced.

featkit's head (``tune_and_fit`` exactly as ``featkit fit`` runs it on one training
fold): standardise, PCA to 128 inside the pipeline, 63 bins, colsample 0.5, 15 leaves,
rounds by early stopping on a group-aware validation split, then a refit. The
baseline is ``LGBMClassifier()`` with its defaults on the raw features, without and
(``--balanced-baseline``) with class weights. Both run with ``--jobs`` threads
(default 1; LightGBM's own default is every core, which on a busy 2-core machine
spins and runs many times slower). Prints fit seconds, balanced accuracy,
and the ratios. ``--baseline-rows N`` subsamples the baseline's training rows when the
full default run would take too long (it says so in the output).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic(rows: int, dim: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    weights = np.geomspace(1.0, 0.15, classes)
    y = rng.choice(classes, size=rows, p=weights / weights.sum())
    basis = np.linalg.qr(rng.normal(size=(dim, 64)))[0]  # signal lives in a 64-d subspace
    centres = rng.normal(scale=1.2, size=(classes, 64))
    signal = centres[y] + rng.normal(size=(rows, 64))
    X = signal @ basis.T * 4 + rng.normal(size=(rows, dim))
    X = np.maximum(X + 0.5, 0)  # ReLU-pooled CNN features are non-negative and sparse-ish
    groups = rng.integers(0, rows // 15, size=rows)  # ~15 images per photographer
    return X.astype(np.float32), np.array([f"c{k:02d}" for k in y], dtype=object), groups.astype(str)


def clothing(store_path: Path | None, classes: int):
    from featkit.api import Collection
    from featkit.config import Config

    data = Path(os.environ.get("FEATKIT_DATASETS", REPO.parent / "shared" / "datasets")) / "clothing"
    if not (data / "labels.csv").is_file():
        return None
    cache = REPO / ".pytest_cache" / "d" / "featkit-real" / "clothing"
    config = Config(root=cache, name="clothing", manifest=(data / "labels.csv").resolve(), image_column="image",
                    tasks=("label",), group="sender_id", store=store_path)
    col = Collection(config)
    if not col.store.exists():
        print(f"extracting clothing features into {config.store_path} (once) ...", flush=True)
    emb = col.extract("mobilenet_v2", progress=False)  # resumes, or only opens the cache
    y, groups = emb.labels("label"), emb.groups
    keep_classes = [c for c, _ in sorted(((c, (y == c).sum()) for c in set(y) if c), key=lambda t: -t[1])[:classes]]
    keep = np.isin(y, keep_classes)
    return emb.X[keep], y[keep].astype(object), groups[keep].astype(str)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("auto", "clothing", "synthetic"), default="auto")
    parser.add_argument("--store", type=Path, default=None, help="clothing store (default: the test cache)")
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=1,
                        help="threads for both (default 1: fair, and immune to a busy shared machine)")
    parser.add_argument("--baseline-rows", type=int, default=None, help="subsample the baseline's training rows")
    parser.add_argument("--balanced-baseline", action="store_true", help="also run defaults + class_weight")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    from lightgbm import LGBMClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold

    from featkit.evaluate import EvalSettings, build_head, tune_and_fit

    jobs = args.jobs
    loaded = None if args.data == "synthetic" else clothing(args.store, args.classes)
    if loaded is None:
        if args.data == "clothing":
            sys.exit("clothing dataset not found; use --data synthetic")
        X, y, groups = synthetic(args.rows, args.dim, args.classes)
        name = f"synthetic {len(y)}x{X.shape[1]}, {args.classes} classes"
    else:
        X, y, groups = loaded
        name = f"clothing MobileNetV2 {len(y)}x{X.shape[1]}, {len(set(y))} largest classes"
    train, test = next(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(X, y, groups))
    print(f"data: {name}; train {len(train)}, test {len(test)} (grouped split); {jobs} threads; "
          f"cores here: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)

    results = []

    def run(label: str, fit, predict, n_train: int) -> None:
        start = time.perf_counter()
        model = fit()
        seconds = time.perf_counter() - start
        bal = balanced_accuracy_score(y[test].astype(str), np.asarray(predict(model)).astype(str))
        results.append((label, seconds, bal, n_train))
        print(f"  {label:<46} fit {seconds:8.1f} s   balanced accuracy {bal:.4f}   (train rows {n_train})",
              flush=True)

    for rebalance in ("auto", "none"):
        settings = EvalSettings(rebalance=rebalance, n_jobs=jobs)
        def fit_featkit(settings=settings):
            pipe, decided = build_head("lgbm", y[train], n_features=X.shape[1], settings=settings)
            fitted, chosen, _ = tune_and_fit("lgbm", pipe, X=X[train], y=y[train], groups=groups[train],
                                             settings=settings)
            fitted.chosen = (decided["rebalance"]["used"], chosen["n_estimators"])
            return fitted
        run(f"featkit lgbm (rebalance {rebalance})", fit_featkit, lambda m: m.predict(X[test]), len(train))
    if not args.skip_baseline:
        base_rows = train
        if args.baseline_rows and args.baseline_rows < len(train):
            base_rows = np.random.default_rng(0).choice(train, args.baseline_rows, replace=False)
            print(f"  (baseline subsampled to {len(base_rows)} training rows to bound its run time)")
        variants = [("LightGBM defaults", {})]
        if args.balanced_baseline:
            variants.append(("LightGBM defaults + class_weight=balanced", {"class_weight": "balanced"}))
        for label, extra in variants:
            run(label, lambda extra=extra: LGBMClassifier(n_jobs=jobs, verbose=-1, **extra).fit(X[base_rows],
                                                                                             y[base_rows]),
                lambda m: m.predict(X[test]), len(base_rows))
        ours = results[0]
        for label, seconds, bal, _ in results[2:]:
            print(f"ratio: {label} / featkit lgbm fit time = {seconds / ours[1]:.1f}x; "
                  f"balanced accuracy featkit − baseline = {ours[2] - bal:+.4f}")
    print(f"goal: featkit lgbm fit ≤ 60 s → {'met' if results[0][1] <= 60 else 'NOT met'} ({results[0][1]:.1f} s)")


if __name__ == "__main__":
    main()
