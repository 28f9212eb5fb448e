"""Fit a head on one task of cached embeddings: honest evaluation, the final model, a run folder.

:func:`fit` evaluates head ``clf`` on a task (the split column, else group-aware
folds; hyperparameters chosen inside each training fold), refits it on every labelled
row, and returns a :class:`FitResult` held in memory: metrics, out-of-fold predictions,
the fitted pipeline. :meth:`FitResult.save` writes the run folder
(``<runs>/<task>-<clf>-<backbone>-<variant>-<time>`` unless told where):

* ``report.json`` — everything measured and decided (metrics, per-class scores,
  confusion matrix, split, rebalancing, hyperparameters per fold, timings, the store's
  feature-space metadata, featkit version);
* ``report.md`` — the same for people; ``confusion_matrix.png``;
* ``predictions.csv`` — out-of-fold (or test-set) prediction and probabilities per image;
* ``model.skops`` + ``model.json`` — the head refit on every labelled row of the task,
  for ``featkit predict``.

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
from featkit.evaluate import EvalSettings, Evaluation, build_head, compute_metrics, cross_evaluate, tune_and_fit
from featkit.heads.registry import get_head_spec
from featkit.modelio import feature_space
from featkit.paths import RUNS_ELSEWHERE, new_folder, slug


@dataclass(frozen=True)
class FitSettings(EvalSettings):
    """Evaluation settings plus what to produce."""

    refit: bool = True  # refit on all labelled rows: the model `featkit predict` uses (--no-model: off)
    plot: bool = True  # confusion_matrix.png when saved


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
        """Out-of-fold predictions: id, label, predicted, fold and one ``p:<class>`` column per class."""
        ev, tested = self.evaluation, self.evaluation.tested
        frame = pd.DataFrame({"id": self.data.ids[tested].astype(str), "label": self.data.y[tested].astype(str),
                              "predicted": ev.pred[tested].astype(str), "fold": ev.fold[tested]})
        for j, c in enumerate(ev.classes):
            frame[f"p:{c}"] = ev.proba[tested, j]
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
        progress: Callable[[int, int], None] | None = None) -> FitResult:
    """Evaluate head ``clf`` on ``task`` honestly and refit it on all labelled rows (see the module docstring).

    ``progress(done, total)`` is called after each fold.
    """
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

    evaluation = cross_evaluate(data.X, data.y, clf=clf, splits=splits, groups=data.groups, settings=settings,
                                progress=progress)
    tested = evaluation.tested
    scores = compute_metrics(data.y[tested], evaluation.pred[tested], evaluation.classes)
    fold_bal = [f["balanced_accuracy"] for f in evaluation.folds]
    scores["metrics"]["fold_balanced_accuracy"] = fold_bal
    if len(fold_bal) > 1:
        scores["metrics"]["balanced_accuracy_std"] = round(float(np.std(fold_bal)), 4)

    space = feature_space(emb.meta)
    manifest = emb.manifest
    model_info, pipeline, model_meta = None, None, {}
    if settings.refit:
        pipe, _ = build_head(clf, data.y, n_features=data.X.shape[1], settings=settings)
        start = time.perf_counter()
        pipeline, chosen, detail = tune_and_fit(clf, pipe, X=data.X, y=data.y, groups=data.groups, settings=settings)
        final_seconds = time.perf_counter() - start
        model_meta = {"task": task, "clf": clf, "classes": evaluation.classes, "feature_space": space,
                      "store_key": emb.key, "params": chosen, "trained_on": int(len(data.y)),
                      "collection": manifest.name}
        model_info = {"files": ["model.skops", "model.json"], "trained_on": int(len(data.y)), "params": chosen,
                      "tuning": detail, "fit_seconds": round(final_seconds, 3)}

    config = manifest.config
    n_train = [f["n_train"] for f in evaluation.folds]
    warnings_list = list(splits.warnings) + [f"class {c!r} left out: {why}" for c, why in dropped.items()]
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
        "folds": evaluation.folds,
        "fit_seconds": round(evaluation.fit_seconds, 3),
        "predict_seconds": round(evaluation.predict_seconds, 4),
        "predict_ms_per_image": round(1000 * evaluation.predict_seconds / max(1, int(tested.sum())), 4),
        "model": model_info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
    }
    default_dir = new_run_dir(config.runs_dir, task, clf, emb.key) if config else None
    return FitResult(report=report, data=data, evaluation=evaluation, pipeline=pipeline, model_meta=model_meta,
                     default_dir=default_dir)


def fit_tasks(emb: Embeddings, tasks, clf: str = "logreg", *, settings: FitSettings = FitSettings(),
              progress: Callable[[str, int, int], None] | None = None) -> list[FitResult]:
    """:func:`fit` for several tasks (``"all"`` or None: every task of the collection)."""
    get_head_spec(clf)
    settings.validate()
    names = resolve_tasks(emb.manifest, tasks)
    return [fit(emb, name, clf, settings=settings,
                progress=None if progress is None else (lambda done, total, name=name: progress(name, done, total)))
            for name in names]
