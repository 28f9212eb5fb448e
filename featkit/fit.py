"""Fit a head on one task of cached embeddings: honest evaluation, the final model, a run folder.

:func:`fit` evaluates head ``clf`` on a task (the split column, else group-aware
folds; hyperparameters chosen inside each training fold), refits it on every labelled
row, and returns a :class:`FitResult` held in memory: metrics, out-of-fold predictions,
the fitted pipeline. :meth:`FitResult.save` writes the run folder
(``<runs>/<task>-<clf>-<backbone>-<variant>-<time>`` unless told where):

* ``report.json`` — everything measured and decided (metrics, per-class scores,
  confusion matrix, split, rebalancing, hyperparameters per fold and of the saved model
  and why they differ, calibration with ECE before and after, the risk–coverage table,
  the review threshold, timings, the store's feature-space metadata, featkit version);
* ``report.md`` — the same for people; ``confusion_matrix.png``, ``reliability.png``;
* ``predictions.csv`` — out-of-fold (or test-set) prediction, confidence, whether it
  needs review, and ``<task>:p:<class>`` probabilities per image (the names
  ``featkit predict`` writes);
* ``model.skops`` + ``model.json`` — the head refit (tuned and calibrated the same way)
  on every labelled row of the task, for ``featkit predict``; model.json keeps the
  review threshold and the out-of-fold confidences it came from.

**Review threshold.** ``report["review"]["threshold"]`` is the lowest confidence at
which the out-of-fold predictions reach ``min_precision`` (0.95): a prediction below it
needs a person. It is measured on predictions of images no model had seen, by fold
models; the saved model, trained on every row, applies it to new images.

Rows with an unknown label are left out of that task only; rows whose image has no
embedding in the store (failed to decode) are left out and counted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from featkit._version import __version__
from featkit.data.corrections import corrections_report
from featkit.data.splits import class_counts, evaluation_splits, rare_classes, resolve_split_mode
from featkit.embeddings import Embeddings, TaskData, resolve_tasks
from featkit.errors import FeatkitError
from featkit.evaluate import (EvalSettings, Evaluation, build_head, calibrate, compute_metrics, cross_evaluate,
                              searched_names, threads, tune)
from featkit.heads.calibration import (REVIEW_PRECISIONS, confidence_and_correct, expected_calibration_error,
                                       reliability, review_threshold, risk_coverage)
from featkit.heads.registry import get_head_spec
from featkit.modelio import feature_space, probability_column
from featkit.paths import RUNS_ELSEWHERE, new_folder, slug


@dataclass(frozen=True)
class FitSettings(EvalSettings):
    """Evaluation settings plus what to produce."""

    refit: bool = True  # refit on all labelled rows: the model `featkit predict` uses (--no-model: off)
    plot: bool = True  # confusion_matrix.png and reliability.png when saved
    min_precision: float = 0.95  # the review threshold: lowest confidence whose kept predictions reach this precision

    def validate(self) -> None:
        super().validate()
        if not 0 < self.min_precision <= 1:
            raise FeatkitError(f"min precision must be in (0, 1], got {self.min_precision}")


@dataclass(eq=False)
class FitResult:
    """A fitted and honestly evaluated head. Nothing is written until :meth:`save`."""

    report: dict = field(repr=False)
    data: TaskData = field(repr=False)
    evaluation: Evaluation = field(repr=False)
    pipeline: Any = field(default=None, repr=False)  # refit on every row of `data`; None with refit=False
    model_meta: dict = field(default_factory=dict, repr=False)  # what model.json records
    default_dir: Path | None = field(default=None, repr=False)
    run_dir: Path | None = None  # set by save()

    def __repr__(self) -> str:
        m = self.metrics
        return (f"FitResult({self.task!r}, {self.report['clf']}, {self.report['backbone']}/{self.report['variant']}: "
                f"balanced accuracy {m['balanced_accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, "
                f"n_test {self.report['n_test']})")

    @property
    def task(self) -> str:
        return self.report["task"]

    @property
    def metrics(self) -> dict:
        return self.report["metrics"]

    @property
    def classes(self) -> list[str]:
        return list(self.evaluation.classes)

    @property
    def predictions(self) -> pd.DataFrame:
        """Out-of-fold predictions: id, label, predicted, confidence, needs_review, fold, ``<task>:p:<class>``..."""
        ev, tested = self.evaluation, self.evaluation.tested
        confidence = ev.proba[tested].max(axis=1)
        threshold = self.report["review"]["threshold"]
        frame = pd.DataFrame({"id": self.data.ids[tested].astype(str), "label": self.data.y[tested].astype(str),
                              "predicted": ev.pred[tested].astype(str), "confidence": confidence,
                              "needs_review": confidence < threshold if threshold is not None else True,
                              "fold": ev.fold[tested]})
        for j, c in enumerate(ev.classes):
            frame[probability_column(self.task, c)] = ev.proba[tested, j]
        return frame

    def to_dict(self) -> dict:
        return self.report

    def save(self, path: str | Path | None = None) -> Path:
        """Write the run folder (``path``, else a new folder under the collection's runs); return it."""
        from featkit.modelio import save_model
        from featkit.report import write_run

        run_dir = Path(path) if path is not None else self.default_dir
        if run_dir is None:
            raise FeatkitError("this result has no collection to save into; pass a folder: result.save('runs/x')")
        with new_folder(run_dir, fix=RUNS_ELSEWHERE):
            self.report["run"] = run_dir.name
            files = []
            if self.pipeline is not None:
                save_model(run_dir, self.pipeline, meta=self.model_meta)
                files = ["model.skops", "model.json"]
            write_run(run_dir, self.report, self.predictions, plot=self.report["settings"]["plot"], extra_files=files)
        self.run_dir = run_dir
        return run_dir


def new_run_dir(runs_dir: Path, task: str, clf: str, key: str) -> Path:
    """A fresh ``<task>-<clf>-<backbone>-<variant>-<time>`` folder name under ``runs_dir`` (not created)."""
    backbone, variant = key.split("/", 1)
    base = runs_dir / "-".join(slug(p) for p in (task, clf, backbone, variant, time.strftime("%Y%m%d-%H%M%S")))
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def _drop_rare(data: TaskData, mode: str, settings: FitSettings, train_mask) -> tuple[TaskData, dict]:
    rare = rare_classes(data.y, groups=data.groups, splits_mode=mode, cv=settings.cv, inner_cv=settings.inner_cv,
                        train_mask=train_mask)
    if not rare:
        return data, {}
    keep = ~np.isin(data.y, list(rare))
    remaining = sorted(set(data.y[keep].tolist()))
    if len(remaining) < 2:
        raise FeatkitError(
            f"after leaving out classes too small to evaluate ({'; '.join(f'{k}: {v}' for k, v in rare.items())}) "
            f"only {remaining} remain{'s' if len(remaining) == 1 else ''}; a classifier needs at least two. "
            "Use a smaller --cv or label more images"
        )
    return data.subset(keep, dropped_rare=int((~keep).sum())), rare


def fit(emb: Embeddings, task: str, clf: str = "logreg", *, settings: FitSettings = FitSettings(),
        progress: Callable[[int, int, str], None] | None = None) -> FitResult:
    """Evaluate head ``clf`` on ``task`` honestly and refit it on all labelled rows (see the module docstring).

    ``progress(done, total, message)`` is called after each fold and after the refit.
    """
    started = time.perf_counter()
    spec = get_head_spec(clf)
    settings.validate()
    data = emb.task(task)
    mode = resolve_split_mode(settings.split, split=data.split, groups=data.groups)
    train_mask = None
    if mode == "column":
        first = evaluation_splits(data.y, data.groups, split=data.split, mode=mode)
        train_mask = np.zeros(len(data.y), bool)
        train_mask[first.folds[0][0]] = True
    data, dropped = _drop_rare(data, mode, settings, train_mask)
    splits = evaluation_splits(data.y, data.groups, split=data.split, cv=settings.cv, mode=mode, seed=settings.seed)
    if mode == "column":  # test rows of classes never seen in training cannot be predicted
        train, test = splits.folds[0]
        seen = set(data.y[train].tolist())
        unseen = sorted(set(data.y[test].tolist()) - seen)
        if unseen:
            dropped.update({c: "in the test set but not in training" for c in unseen})
            splits.folds = [(train, test[np.isin(data.y[test], list(seen))])]

    steps = len(splits.folds) + int(settings.refit)
    groups = None if mode == "stratified" else data.groups  # ungrouped outer folds: ungrouped inner ones too
    evaluation = cross_evaluate(data.X, data.y, clf=clf, splits=splits, groups=groups, settings=settings,
                                progress=None if progress is None else (lambda done, _, msg: progress(done, steps, msg)))
    tested = evaluation.tested
    scores = compute_metrics(data.y[tested], evaluation.pred[tested], evaluation.classes)
    fold_bal = [f["balanced_accuracy"] for f in evaluation.folds]
    scores["metrics"]["fold_balanced_accuracy"] = fold_bal
    if len(fold_bal) > 1:
        scores["metrics"]["balanced_accuracy_std"] = round(float(np.std(fold_bal)), 4)
    confidence, correct = confidence_and_correct(evaluation.proba[tested],
                                                 np.searchsorted(evaluation.classes, data.y[tested]))
    calibration = _calibration_block(evaluation, data.y)
    scores["metrics"]["ece"] = calibration["ece_after"]
    review = {**review_threshold(confidence, correct, settings.min_precision),
              "basis": f"out-of-fold predictions of {int(tested.sum())} images (calibrated as each fold chose)"}

    space = feature_space(emb.meta)
    manifest = emb.manifest
    model_info, pipeline, model_meta = None, None, {}
    if settings.refit:
        pipe, _ = build_head(clf, data.y, n_features=data.X.shape[1], settings=settings)
        start = time.perf_counter()
        with threads(settings):
            tuned = tune(clf, pipe, X=data.X, y=data.y, groups=groups, settings=settings)
            pipeline, chosen_calibration, _ = calibrate(clf, tuned, X=data.X, y=data.y, groups=groups,
                                                        settings=settings)
        final_seconds = time.perf_counter() - start
        model_meta = {"task": task, "clf": clf, "classes": evaluation.classes, "feature_space": space,
                      "store_key": emb.key, "params": tuned.params, "trained_on": int(len(data.y)),
                      "collection": manifest.name, "calibration": chosen_calibration["method"], "review": review,
                      "out_of_fold": {"confidence": np.round(confidence, 5).tolist(),
                                      "correct": correct.astype(int).tolist()}}
        model_info = {"files": ["model.skops", "model.json"], "trained_on": int(len(data.y)), "params": tuned.params,
                      "tuning": tuned.detail, "calibration": chosen_calibration, "warnings": tuned.warnings,
                      "fit_seconds": round(final_seconds, 3)}
        calibration["model"] = chosen_calibration["method"]
        if progress is not None:
            progress(steps, steps, f"refit on all {len(data.y)} rows: {_shown(tuned.params, clf, settings)}"
                                   f"calibration {chosen_calibration['method']}; {final_seconds:.1f} s")

    config = manifest.config
    n_train = [f["n_train"] for f in evaluation.folds]
    hyper = hyperparameters(evaluation.folds, model_info, clf=clf, settings=settings)
    warnings_list = (list(splits.warnings) + [f"class {c!r} left out: {why}" for c, why in dropped.items()]
                     + _edge_warnings(evaluation.folds, model_info))
    if data.counts.get("excluded_trunk_training"):
        warnings_list.append(f"{data.counts['excluded_trunk_training']} labelled images the fine-tuned trunk of "
                             f"{emb.variant} trained or early-stopped on are left out: only images it never saw "
                             "are evaluated")
    report = {
        "featkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": None,
        "collection": {"name": manifest.name, "manifest_hash": manifest.manifest_hash, "images": len(manifest)},
        "task": task,
        "clf": clf,
        "head": spec.description,
        "backbone": emb.backbone,
        "variant": emb.variant,
        "store": {"path": str(config.store_path) if config else None, "key": emb.key, **space,
                  "featkit_version": emb.meta.get("featkit_version"),
                  "manifest_hash": emb.meta.get("manifest_hash")},
        "rebalance": evaluation.decided["rebalance"],
        "pca": evaluation.decided["pca"],
        "split": {"mode": splits.mode, "description": splits.description, "folds": len(splits.folds),
                  "group_column": config.group if config and data.groups is not None else None,
                  "split_column": config.split if config and mode == "column" else None,
                  "seed": settings.seed, "inner_cv": settings.inner_cv},
        "classes": evaluation.classes,
        "class_counts": class_counts(data.y),
        "dropped_classes": dropped,
        "warnings": warnings_list,
        "rows": data.counts,
        "corrections": corrections_report(manifest.corrections, [task]),
        "n_train": int(round(float(np.mean(n_train)))),
        "n_test": int(tested.sum()),
        **scores,
        "calibration": calibration,
        "risk_coverage": risk_coverage(confidence, correct),
        "review": review,
        "review_table": [review_threshold(confidence, correct, p) for p in REVIEW_PRECISIONS],
        "hyperparameters": hyper,
        "folds": evaluation.folds,
        "folds_seconds": round(evaluation.fit_seconds, 3),
        "predict_seconds": round(evaluation.predict_seconds, 4),
        "predict_ms_per_image": round(1000 * evaluation.predict_seconds / max(1, int(tested.sum())), 4),
        "model": model_info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
    }
    report["fit_seconds"] = round(time.perf_counter() - started, 3)  # the whole call: folds, search, refit
    default_dir = new_run_dir(config.runs_dir, task, clf, emb.key) if config else None
    return FitResult(report=report, data=data, evaluation=evaluation, pipeline=pipeline, model_meta=model_meta,
                     default_dir=default_dir)


def _shown(params: dict, clf: str, settings: FitSettings) -> str:
    return "".join(f"{n}={params[n]:g}; " for n in searched_names(clf, settings) if n in params)


def _calibration_block(evaluation: Evaluation, y: np.ndarray) -> dict:
    """ECE of the out-of-fold probabilities before (the head's own) and after calibration, per method, and bins."""
    tested = evaluation.tested
    y_idx = np.searchsorted(evaluation.classes, y[tested])
    before = evaluation.by_method[evaluation.base][tested]
    after = evaluation.proba[tested]
    chosen = [f["calibration"]["method"] for f in evaluation.folds]
    counts = {m: chosen.count(m) for m in dict.fromkeys(chosen)}
    return {
        "base": evaluation.base,
        "folds": chosen,
        "chosen": ", ".join(f"{m} ({n} of {len(chosen)} folds)" for m, n in counts.items()),
        "how": "chosen in each training fold by ECE on its out-of-fold rows, fitted on them (never on test rows)",
        "ece_before": round(expected_calibration_error(before, y_idx), 4),
        "ece_after": round(expected_calibration_error(after, y_idx), 4),
        "ece_by_method": {m: round(expected_calibration_error(p[tested], y_idx), 4)
                          for m, p in evaluation.by_method.items()},
        "reliability": {"before": reliability(before, y_idx), "after": reliability(after, y_idx)},
    }


def hyperparameters(folds: list[dict], model: dict | None, *, clf: str, settings: EvalSettings) -> dict:
    """Per searched hyperparameter: what each fold chose, what the saved model uses, and why they differ."""
    spec = get_head_spec(clf)
    names = searched_names(clf, settings)
    out = {}
    for name in names:
        chosen = [f["params"].get(name) for f in folds]
        entry: dict[str, Any] = {"folds": chosen, "model": None if model is None else model["params"].get(name)}
        entry["why"] = _why(name, chosen, model, early_stopping=spec.tuning == "early_stopping")
        out[name] = entry
    return out


def _why(name: str, chosen: list, model: dict | None, *, early_stopping: bool) -> str:
    counts = {v: chosen.count(v) for v in dict.fromkeys(chosen)}
    folds = ", ".join(f"{v:g} ({n} of {len(chosen)})" if isinstance(v, (int, float)) else f"{v} ({n})"
                      for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    if name == "n_estimators" and early_stopping:
        saved = "" if model is None else f"; the saved model {model['params'][name]}"
        return (f"rounds come from early stopping on a validation split of each training set, scaled to the rows "
                f"refit on: folds {folds}{saved}")
    if model is None:
        return f"folds chose {folds} (no saved model)"
    final = model["params"][name]
    if all(v == final for v in chosen):
        return f"every fold and the saved model chose {name}={final:g}"
    # the value the folds chose most often among those the saved model did not take
    others = {v: n for v, n in counts.items() if v != final}
    common = max(others, key=others.get)
    scores = {r[name]: r for r in model["tuning"].get("inner_scores", [])
              if all(r.get(k) == v for k, v in model["params"].items() if k in r and k != name)}
    rows = model["trained_on"]
    if final not in scores or common not in scores:
        return f"folds chose {folds}; the saved model, searched on all {rows} rows, chose {final:g}"
    gap = scores[final]["score"] - scores[common]["score"]
    spread = scores[final]["std"]
    verdict = (f"a near tie: the gap is within the spread between inner folds (±{spread:.3f}), so either value "
               "serves" if gap <= spread else
               f"beyond the spread between inner folds (±{spread:.3f}): with every row, {final:g} is better")
    return (f"folds chose {folds}, each on its own training rows; the saved model's search on all {rows} rows "
            f"chose {final:g} (inner balanced accuracy {scores[final]['score']:.3f}) over {common:g} "
            f"({scores[common]['score']:.3f}): {verdict}")


def _edge_warnings(folds: list[dict], model: dict | None) -> list[str]:
    """Each hyperparameter warning once, with the folds (and the saved model) that gave it."""
    seen: dict[str, list[str]] = {}
    for f in folds:
        for w in f["warnings"]:
            seen.setdefault(w, []).append(f"fold {f['fold'] + 1}")
    for w in (model or {}).get("warnings", []):
        seen.setdefault(w, []).append("the saved model")
    return [f"{w} ({', '.join(where)})" for w, where in seen.items()]


def fit_tasks(emb: Embeddings, tasks, clf: str = "logreg", *, settings: FitSettings = FitSettings(),
              progress: Callable[[str, int, int, str], None] | None = None) -> list[FitResult]:
    """:func:`fit` for several tasks (``"all"`` or None: every task of the collection)."""
    get_head_spec(clf)
    settings.validate()
    names = resolve_tasks(emb.manifest, tasks)
    return [fit(emb, name, clf, settings=settings,
                progress=None if progress is None else
                (lambda done, total, message, name=name: progress(name, done, total, message)))
            for name in names]
