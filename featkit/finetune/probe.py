"""Frozen probe vs fine-tuned: does fine-tuning beat a head on cached ImageNet embeddings?

For a finished run, on its own held-out rows: a ``featkit fit`` head (logreg by
default, tuned by group-aware inner CV on the run's train + validation rows) on

* the frozen backbone's embeddings, as ``featkit extract`` caches them by default;
* the frozen backbone at the run's image size (when the run trained at another size);
* the run's fine-tuned trunk (variant ``finetuned-<run>``), cached the same way;

beside the fine-tuned model's own heads. Every embedding goes through the store, so
the probe exercises exactly the path ``featkit fit --variant finetuned-<run>`` takes.
"""

from __future__ import annotations

import json

import numpy as np

from featkit.backbones import Preprocess, create_backbone
from featkit.config import Config
from featkit.data.manifest import Collection
from featkit.evaluate import EvalSettings, build_head, tune_and_fit
from featkit.extract import ExtractSettings, extract
from featkit.finetune.report import balanced_accuracy
from featkit.finetune.runs import run_paths
from featkit.finetune.settings import FinetuneSettings
from featkit.finetune.splits import Split
from featkit.pipeline import extract_collection
from featkit.store import FeatureStore


def cache_probe_features(config: Config, collection: Collection, run: str, *,
                         settings: ExtractSettings = ExtractSettings(progress=False)) -> dict[str, str]:
    """Extract (or resume) the frozen and fine-tuned embeddings the probe compares; name -> store key."""
    run_settings = FinetuneSettings.load(run_paths(config, run).settings)
    report = json.loads(run_paths(config, run).report.read_text())
    name, weights = run_settings.backbone, run_settings.weights
    keys = {"frozen": extract_collection(config, collection, name, weights=weights, settings=settings).key}
    net = create_backbone(name, weights=weights)
    tuned = Preprocess.from_dict(report["preprocess"])
    if tuned.fingerprint != net.preprocess.fingerprint:
        net.preprocess = tuned
        keys["frozen_same_size"] = extract(collection, net, store=FeatureStore(config.store_path),
                                           variant=f"{net.weights}-{tuned.crop_size}px", settings=settings).key
    keys["finetuned"] = extract_collection(config, collection, name, variant=report["variant"],
                                           settings=settings).key
    return keys


def probe(store: FeatureStore, key: str, collection: Collection, task: str, split: Split, *,
          clf: str = "logreg", eval_settings: EvalSettings = EvalSettings()) -> float | None:
    """Held-out balanced accuracy of head ``clf`` trained on the split's train + val rows of ``key``.

    ``eval_settings`` are fit's (e.g. ``params={"C": (0.01,)}`` fixes C instead of searching it).
    """
    features = store.load(key)
    where = dict(zip(collection.index_of(features.ids).tolist(), range(len(features.ids))))
    labels = collection.task_labels(task)
    groups = collection.groups

    def rows(part: np.ndarray) -> np.ndarray:
        return np.array([r for r in part if r in where and labels[r] is not None], dtype=np.int64)

    train, test = rows(np.concatenate([split.train, split.val])), rows(split.test)
    if len(test) == 0 or len(set(labels[train])) < 2:
        return None
    X = features.X[[where[r] for r in train]]
    y = labels[train].astype(str)
    pipe, _ = build_head(clf, y, n_features=X.shape[1], settings=eval_settings)
    fitted, _, _ = tune_and_fit(clf, pipe, X=X, y=y, groups=None if groups is None else groups[train].astype(str),
                                settings=eval_settings)
    pred = fitted.predict(features.X[[where[r] for r in test]])
    return balanced_accuracy(labels[test].astype(str), np.asarray(pred).astype(str))


def probe_comparison(config: Config, collection: Collection, run: str, *, clf: str = "logreg",
                     eval_settings: EvalSettings = EvalSettings(),
                     settings: ExtractSettings = ExtractSettings(progress=False)) -> dict:
    """Per task: held-out balanced accuracy of each probe and of the fine-tuned heads."""
    paths = run_paths(config, run)
    report = json.loads(paths.report.read_text())
    split = Split.load(paths.split, collection)
    keys = cache_probe_features(config, collection, run, settings=settings)
    store = FeatureStore(config.store_path)
    tasks = {}
    for entry in report["tasks"]:
        task = entry["task"]
        row = {f"{name}_probe": probe(store, key, collection, task, split, clf=clf, eval_settings=eval_settings)
               for name, key in keys.items()}
        row["finetuned_heads"] = entry["metrics"]["balanced_accuracy"]
        tasks[task] = row
    return {"run": run, "clf": clf, "keys": keys, "split": report["split"], "tasks": tasks}
