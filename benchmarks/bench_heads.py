"""Every head's full ``fit`` against plain scikit-learn / LightGBM defaults, in one run.

    flock /tmp/featkit-bench.lock nice -n 5 .venv/bin/python benchmarks/bench_heads.py --baseline-folds linsvc=1,lgbm=1
    .venv/bin/python benchmarks/bench_heads.py --heads logreg,linsvc --skip-baseline
    .venv/bin/python benchmarks/bench_heads.py --dataset cpac-porcelain --skip-baseline   # ECE only

Data: MobileNetV2 features (1280-d) of all 5,398 labelled clothing photos, task
``label`` (20 garment classes), folds grouped by photographer (``sender_id``); or of
the 1,728 cpac-porcelain images, task ``dynasty``, scored on its published val split.
The store is the one the real-data tests cache (``.pytest_cache/d/featkit-real/<dataset>``;
made once if missing, or ``--store PATH``).

featkit: ``featkit.fit.fit`` exactly as ``featkit fit --task label --clf HEAD`` runs it
(5 group-aware outer folds, hyperparameters chosen inside each training fold, the
calibration it decides on, the final refit on every row), timed by the wall clock
around the whole call. Its balanced accuracy and ECE (before calibration: the head's own probabilities; after:
as each fold's calibration chose) are on its pooled out-of-fold predictions.

Baseline: ``make_pipeline(StandardScaler(), LogisticRegression() | LinearSVC() |
LGBMClassifier())`` with their defaults, fitted on the training rows of *the same
folds* (read from featkit's result) and scored on the same pooled test rows; its time
is the sum over folds (no tuning, no refit). LinearSVC (liblinear, C=1) and LightGBM's
defaults on 1280 raw dims take many minutes per fold (LinearSVC's five folds had not
finished after 15 minutes here): ``--baseline-folds linsvc=1,lgbm=1`` runs only their
first fold and says so (their balanced accuracy is then on that fold's rows only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# the collections as tests/conftest.py configures them (same cache folders), and the task benchmarked
DATASETS = {"clothing": ("label", {"image_column": "image", "tasks": ("label", "kids"), "group": "sender_id"}),
            "cpac-porcelain": ("dynasty", {"image_column": "image", "tasks": ("dynasty",), "split": "source_split"})}


def real_embeddings(name: str = "clothing", store: Path | None = None):
    """A shared dataset's MobileNetV2 embeddings (the test cache's store unless ``store``), or None."""
    from featkit.api import Collection
    from featkit.config import Config

    data = Path(os.environ.get("FEATKIT_DATASETS", REPO.parent / "shared" / "datasets")) / name
    if not (data / "labels.csv").is_file():
        return None
    cache = REPO / ".pytest_cache" / "d" / "featkit-real" / name
    cache.mkdir(parents=True, exist_ok=True)
    config = Config(root=cache, name=name, manifest=(data / "labels.csv").resolve(), store=store, **DATASETS[name][1])
    col = Collection(config)
    if not col.store.exists():
        print(f"extracting {name} features into {config.store_path} (once) ...", flush=True)
    return col.extract("mobilenet_v2", progress=False)  # resumes, or only opens the cache


def baseline(name: str):
    from lightgbm import LGBMClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    clf = {"logreg": LogisticRegression, "linsvc": LinearSVC, "lgbm": LGBMClassifier}[name]()
    if name == "lgbm":
        clf.set_params(verbose=-1)  # quiet; everything else is LightGBM's default (all cores)
    return make_pipeline(StandardScaler(), clf)


def run_baseline(name: str, X: np.ndarray, y: np.ndarray, fold: np.ndarray, n_folds: int, *,
                 split_column: bool) -> tuple[float, float, float, int]:
    """Defaults trained on each fold's training rows (a split column: every row not in its test set)."""
    from sklearn.metrics import balanced_accuracy_score

    seconds, cpu, true, pred = 0.0, 0.0, [], []
    for k in range(n_folds):
        train = np.flatnonzero((fold != k) & ((fold >= 0) | split_column))
        test = np.flatnonzero(fold == k)
        start, tick = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs/liblinear "failed to converge" at default max_iter
            model = baseline(name).fit(X[train], y[train])
        seconds += time.perf_counter() - start
        cpu += time.process_time() - tick
        true.append(y[test])
        pred.append(model.predict(X[test]))
    true, pred = np.concatenate(true).astype(str), np.concatenate(pred).astype(str)
    return seconds, cpu, float(balanced_accuracy_score(true, pred)), len(true)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", default="logreg,linsvc,lgbm", help="comma-separated heads")
    parser.add_argument("--dataset", default="clothing", choices=sorted(DATASETS))
    parser.add_argument("--store", type=Path, default=None, help="store (default: the test cache)")
    parser.add_argument("--baseline-folds", default="",
                        help="HEAD=N,...: run that head's defaults on the first N folds only (slow defaults)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    from featkit.fit import FitSettings, fit

    task = DATASETS[args.dataset][0]
    emb = real_embeddings(args.dataset, args.store)
    if emb is None:
        sys.exit(f"{args.dataset} dataset not found (set FEATKIT_DATASETS)")
    print(f"data: {args.dataset} {task}, {emb.X.shape[0]} x {emb.X.shape[1]} MobileNetV2; cores here "
          f"{os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for head in args.heads.split(","):
        start, cpu = time.perf_counter(), time.process_time()
        result = fit(emb, task, head, settings=FitSettings(plot=False))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rep = result.report
        final = (rep.get("model") or {}).get("params")
        print(f"featkit {head:<7} wall {wall:7.1f} s, CPU {cpu:7.1f} s (report fit_seconds {rep['fit_seconds']:.1f}); balanced "
              f"accuracy {rep['metrics']['balanced_accuracy']:.4f} on {rep['n_test']} rows; folds chose "
              f"{[f['params'] for f in rep['folds']]}; saved model {final}", flush=True)
        cal = rep["calibration"]
        print(f"  ECE {cal['ece_before']:.4f} ({cal['base']}) -> {cal['ece_after']:.4f} ({cal['chosen']}); "
              f"review threshold at precision 0.95: {rep['review']['threshold']} "
              f"({rep['review']['kept']} of {rep['review']['n']} kept)", flush=True)
        row = {"head": head, "featkit_s": wall, "featkit_cpu": cpu, "featkit_bal": rep["metrics"]["balanced_accuracy"],
               "ece": f"{cal['ece_before']:.4f} → {cal['ece_after']:.4f}"}
        if not args.skip_baseline:
            data, fold = result.data, result.evaluation.fold
            n_folds = len(rep["folds"])
            limit = dict(item.split("=") for item in args.baseline_folds.split(",") if item).get(head)
            n_folds = min(int(limit), n_folds) if limit else n_folds
            seconds, cpu, bal, n = run_baseline(head, data.X, data.y, fold, n_folds,
                                                split_column=rep["split"]["mode"] == "column")
            note = "" if n_folds == len(rep["folds"]) else f" ({n_folds} of {len(rep['folds'])} folds)"
            print(f"  defaults {head:<7} wall {seconds:7.1f} s, CPU {cpu:7.1f} s{note}; balanced accuracy {bal:.4f} "
                  f"on {n} rows", flush=True)
            row.update(base_s=seconds, base_cpu=cpu, base_bal=bal, base_note=note)
        rows.append(row)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print("| head | featkit fit wall s (CPU s) | featkit bal. acc | ECE before → after | defaults wall s (CPU s) "
          "| defaults bal. acc |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        base = (f"{r['base_s']:.1f} ({r['base_cpu']:.1f}){r['base_note']} | {r['base_bal']:.4f}" if "base_s" in r
                else "– | –")
        print(f"| {r['head']} | {r['featkit_s']:.1f} ({r['featkit_cpu']:.1f}) | {r['featkit_bal']:.4f} | {r['ece']} "
              f"| {base} |")


if __name__ == "__main__":
    main()
