"""``fit_task``: evaluate a head on one task of a collection and save a run folder.

A run folder (``<collection>/runs/<task>-<clf>-<backbone>-<time>`` unless ``out``) holds

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

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featkit import __version__
from featkit.config import Config
from featkit.data.manifest import Collection, load_collection
from featkit.errors import FeatkitError
from featkit.evaluate import (EvalSettings, Evaluation, build_head, check_labels, class_counts, compute_metrics,
                              cross_evaluate, evaluation_splits, rare_classes, resolve_split_mode, tune_and_fit)
from featkit.heads.registry import get_head_spec
from featkit.modelio import feature_space, save_model
from featkit.store import FeatureSet, FeatureStore

ALL = "all"


@dataclass(frozen=True)
class FitSettings(EvalSettings):
    """Evaluation settings plus where and what to write."""

    out: Path | None = None  # the run folder (several tasks: one sub-folder each); default <root>/runs/<name>
    save_model: bool = True  # refit on all labelled rows and save it for `featkit predict`
    plot: bool = True  # confusion_matrix.png


@dataclass
class RunResult:
    """A finished run: its folder and its report (``report.json``'s content)."""

    run_dir: Path
    report: dict = field(repr=False)

    @property
    def metrics(self) -> dict:
        return self.report["metrics"]

    @property
    def model_dir(self) -> Path | None:
        return self.run_dir if self.report.get("model") else None

    def to_dict(self) -> dict:
        return self.report


@dataclass
class TaskData:
    """One task's labelled rows that have embeddings."""

    ids: np.ndarray
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None
    split: np.ndarray | None
    counts: dict


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_params(items: list[str]) -> dict[str, tuple]:
    """``["C=0.1", "num_leaves=7,15,31"]`` -> ``{"C": (0.1,), "num_leaves": (7, 15, 31)}``."""
    out: dict[str, tuple] = {}
    for item in items:
        name, sep, values = item.partition("=")
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not parts:
            raise FeatkitError(f"parameter {item!r} is not NAME=VALUE or NAME=V1,V2 (e.g. C=0.1, num_leaves=7,15,31)")
        out[name.strip()] = tuple(_number(v) for v in parts)
    return out


def load_features(config: Config, *, backbone: str | None = None, variant: str | None = None) -> FeatureSet:
    """The cached embeddings ``fit`` uses: the store's only group unless backbone/variant pick one."""
    store = FeatureStore(config.store_path)
    if not store.exists():
        raise FeatkitError(f"no feature store at {store.path}; run `featkit extract` first")
    return store.load(store.resolve_key(backbone, variant))


def task_data(collection: Collection, features: FeatureSet, task: str) -> TaskData:
    """Labelled rows of ``task`` that have features (unknown labels: excluded from this task only)."""
    labels = check_labels(collection.task_labels(task), allow_unknown=True)
    row_of = {image_id: r for r, image_id in enumerate(features.ids)}
    pos = np.arange(len(collection))
    known = np.array([v is not None for v in labels])
    has = np.array([i in row_of for i in collection.ids])
    keep = pos[known & has]
    classes = sorted(set(labels[known].tolist()))
    if len(classes) < 2:
        raise FeatkitError(
            f"task {task!r} has {len(classes)} class{'' if len(classes) == 1 else 'es'} "
            f"({', '.join(map(repr, classes)) or 'no labels'}) among {int(known.sum())} labelled images; "
            "a classifier needs at least two"
        )
    if not len(keep):
        raise FeatkitError(f"no labelled image of task {task!r} has features in {features.key}; run `featkit extract`")
    rows = np.array([row_of[collection.ids[i]] for i in keep])
    return TaskData(
        ids=np.asarray(collection.ids, dtype=object)[keep],
        X=features.X[rows],
        y=labels[keep],
        groups=None if collection.groups is None else collection.groups[keep],
        split=None if collection.split is None else collection.split[keep],
        counts={"labelled": int(known.sum()), "unknown": int((~known).sum()),
                "missing_features": int((known & ~has).sum()), "used": int(len(keep))},
    )


def _run_dir(config: Config, settings: FitSettings, task: str, clf: str, backbone: str, several: bool) -> Path:
    if settings.out is not None:
        out = Path(settings.out)
        return out / f"{task}-{clf}" if several else out
    base = config.root / "runs" / f"{task}-{clf}-{backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def _drop_rare(data: TaskData, mode: str, settings: FitSettings, splits_train_mask) -> tuple[TaskData, dict]:
    rare = rare_classes(data.y, groups=data.groups, splits_mode=mode, cv=settings.cv, inner_cv=settings.inner_cv,
                        train_mask=splits_train_mask)
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
    sub = TaskData(ids=data.ids[keep], X=data.X[keep], y=data.y[keep],
                   groups=None if data.groups is None else data.groups[keep],
                   split=None if data.split is None else data.split[keep],
                   counts={**data.counts, "dropped_rare": int((~keep).sum()), "used": int(keep.sum())})
    return sub, rare


def fit_task(
    config: Config,
    *,
    task: str,
    clf: str,
    backbone: str | None = None,
    variant: str | None = None,
    settings: FitSettings = FitSettings(),
    features: FeatureSet | None = None,
    collection: Collection | None = None,
    progress=None,
) -> RunResult:
    """Evaluate head ``clf`` on ``task`` honestly, refit it on all labelled rows, save a run folder.

    ``features``/``collection`` may be passed to reuse what was already loaded
    (``fit_tasks`` does). ``progress(done, total)`` is called after each fold.
    """
    return _fit(config, task=task, clf=clf, backbone=backbone, variant=variant, settings=settings,
                features=features, collection=collection, progress=progress, several=False)


def fit_tasks(config: Config, *, tasks: str | list[str], clf: str, backbone: str | None = None,
              variant: str | None = None, settings: FitSettings = FitSettings(), progress=None) -> list[RunResult]:
    """:func:`fit_task` for several tasks (``"all"``: every task of the collection), loading once."""
    get_head_spec(clf)
    settings.validate()
    collection = load_collection(config)
    names = list(collection.tasks) if tasks == ALL or tasks == [ALL] else ([tasks] if isinstance(tasks, str) else tasks)
    for name in names:
        collection.task_labels(name)  # unknown task: the message lists the valid ones
    features = load_features(config, backbone=backbone, variant=variant)
    return [_fit(config, task=name, clf=clf, backbone=backbone, variant=variant, settings=settings, features=features,
                 collection=collection, progress=progress, several=len(names) > 1) for name in names]


def _fit(config: Config, *, task: str, clf: str, backbone, variant, settings: FitSettings, features, collection,
         progress, several: bool) -> RunResult:
    spec = get_head_spec(clf)
    settings.validate()
    collection = collection or load_collection(config)
    collection.task_labels(task)
    features = features or load_features(config, backbone=backbone, variant=variant)
    data = task_data(collection, features, task)
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

    run_dir = _run_dir(config, settings, task, clf, features.key.split("/")[0], several)
    run_dir.mkdir(parents=True, exist_ok=True)
    space = feature_space(features.meta)
    model_info, final_seconds = None, 0.0
    if settings.save_model:
        pipe, _ = build_head(clf, data.y, n_features=data.X.shape[1], settings=settings)
        start = time.perf_counter()
        fitted, chosen, detail = tune_and_fit(clf, pipe, X=data.X, y=data.y, groups=data.groups, settings=settings)
        final_seconds = time.perf_counter() - start
        save_model(run_dir, fitted, meta={"task": task, "clf": clf, "classes": evaluation.classes,
                                          "feature_space": space, "store_key": features.key, "params": chosen,
                                          "trained_on": int(len(data.y)), "collection": collection.name})
        model_info = {"files": ["model.skops", "model.json"], "trained_on": int(len(data.y)), "params": chosen,
                      "tuning": detail, "fit_seconds": round(final_seconds, 3)}

    n_train = [f["n_train"] for f in evaluation.folds]
    warnings_list = list(splits.warnings) + [f"class {c!r} left out: {why}" for c, why in dropped.items()]
    report = {
        "featkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": run_dir.name,
        "collection": {"name": collection.name, "manifest_hash": collection.manifest_hash, "images": len(collection)},
        "task": task,
        "clf": clf,
        "head": spec.description,
        "backbone": features.key.split("/")[0],
        "variant": features.key.split("/", 1)[1],
        "store": {"path": str(config.store_path), "key": features.key, **space,
                  "featkit_version": features.meta.get("featkit_version"),
                  "manifest_hash": features.meta.get("manifest_hash")},
        "rebalance": evaluation.decided["rebalance"],
        "pca": evaluation.decided["pca"],
        "split": {"mode": splits.mode, "description": splits.description, "folds": len(splits.folds),
                  "group_column": config.group if data.groups is not None else None,
                  "split_column": config.split if mode == "column" else None,
                  "seed": settings.seed, "inner_cv": settings.inner_cv},
        "classes": evaluation.classes,
        "class_counts": class_counts(data.y),
        "dropped_classes": dropped,
        "warnings": warnings_list,
        "rows": data.counts,
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
    _write_run(run_dir, report, data, evaluation, plot=settings.plot)
    return RunResult(run_dir=run_dir, report=report)


def _write_run(run_dir: Path, report: dict, data: TaskData, evaluation: Evaluation, *, plot: bool) -> None:
    from featkit.report import plot_confusion, render_markdown

    files = ["report.json", "report.md", "predictions.csv"]
    if plot:
        plot_confusion(report, run_dir / "confusion_matrix.png")
        files.append("confusion_matrix.png")
    report["files"] = files + (report["model"]["files"] if report["model"] else [])
    with open(run_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label", "predicted", "fold", *(f"p:{c}" for c in evaluation.classes)])
        for i in np.flatnonzero(evaluation.tested):
            writer.writerow([data.ids[i], data.y[i], evaluation.pred[i], int(evaluation.fold[i]),
                             *(f"{p:.5f}" for p in evaluation.proba[i])])
    (run_dir / "report.md").write_text(render_markdown(report))
    tmp = run_dir / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(run_dir / "report.json")


def demo_step(config: Config, collection: Collection, key: str, opts: dict) -> dict:
    """``featkit demo``: fit every task with logreg and report balanced accuracy per task."""
    backbone, variant = key.split("/", 1)
    results = fit_tasks(config, tasks=list(collection.tasks), clf="logreg", backbone=backbone, variant=variant,
                        settings=FitSettings(cv=opts.get("cv", 3)))
    lines = [
        f"fit {r.report['task']} (logreg, {r.report['split']['description']}): balanced accuracy "
        f"{r.metrics['balanced_accuracy']:.3f} (chance {r.metrics['chance_balanced_accuracy']:.3f}), "
        f"macro-F1 {r.metrics['macro_f1']:.3f} → {r.run_dir}"
        for r in results
    ]
    return {"heads": {r.report["task"]: {"run": str(r.run_dir), **r.metrics} for r in results}, "lines": lines}
