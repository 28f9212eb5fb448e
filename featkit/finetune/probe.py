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

from featkit.backbones.variants import load_backbone
from featkit.config import Config
from featkit.data.manifest import Manifest
from featkit.embeddings import load_embeddings
from featkit.evaluate import EvalSettings, build_head, tune_and_fit
from featkit.extract.cache import extract
from featkit.extract.settings import ExtractSettings
from featkit.finetune.report import balanced_accuracy
from featkit.finetune.runs import run_paths
from featkit.finetune.settings import FinetuneSettings
from featkit.finetune.splits import Split
from featkit.store import FeatureStore


def cache_probe_features(config: Config, manifest: Manifest, run: str, *,
                         settings: ExtractSettings = ExtractSettings(progress=False)) -> dict[str, str]:
    """Extract (or resume) the frozen and fine-tuned embeddings the probe compares; name -> store key."""
    run_settings = FinetuneSettings.load(run_paths(config, run).settings)
    report = json.loads(run_paths(config, run).report.read_text())
    name, weights = run_settings.backbone, run_settings.weights
    store = FeatureStore(config.store_path)
    frozen = load_backbone(name, weights=weights)
    keys = {"frozen": extract(manifest, frozen, store=store, settings=settings).key}
    crop = int(report["preprocess"]["crop_size"])
    if crop != frozen.preprocess.crop_size:  # the frozen network at the run's image size
        same_size = load_backbone(name, variant=f"{frozen.weights}-{crop}px")
        keys["frozen_same_size"] = extract(manifest, same_size, store=store, settings=settings).key
    tuned = load_backbone(name, variant=report["variant"], config=config)
    keys["finetuned"] = extract(manifest, tuned, store=store, settings=settings).key
    return keys


def probe(store: FeatureStore, key: str, manifest: Manifest, task: str, split: Split, *,
          clf: str = "logreg", eval_settings: EvalSettings = EvalSettings()) -> float | None:
    """Held-out balanced accuracy of head ``clf`` trained on the split's train + val rows of ``key``.

    ``eval_settings`` are fit's (e.g. ``params={"C": (0.01,)}`` fixes C instead of searching it).
    """
    # the head trains on the run's train + val rows (the trunk saw them: fine for training) and is scored on its
    # test rows only, which the trunk never saw
    data = load_embeddings(store, manifest, key).task(task, min_classes=1, include_trunk_training=True)
    position = manifest.index_of(data.ids)
    train = np.isin(position, np.concatenate([split.train, split.val]))
    test = np.isin(position, split.test)
    if not test.any() or len(set(data.y[train].tolist())) < 2:
        return None
    y = data.y[train].astype(str)
    pipe, _ = build_head(clf, y, n_features=data.X.shape[1], settings=eval_settings)
    groups = None if data.groups is None else data.groups[train].astype(str)
    fitted, _, _ = tune_and_fit(clf, pipe, X=data.X[train], y=y, groups=groups, settings=eval_settings)
    pred = fitted.predict(data.X[test])
    return balanced_accuracy(data.y[test].astype(str), np.asarray(pred).astype(str))


def probe_comparison(config: Config, manifest: Manifest, run: str, *, clf: str = "logreg",
                     eval_settings: EvalSettings = EvalSettings(),
                     settings: ExtractSettings = ExtractSettings(progress=False)) -> dict:
    """Per task: held-out balanced accuracy of each probe and of the fine-tuned heads."""
    paths = run_paths(config, run)
    report = json.loads(paths.report.read_text())
    split = Split.load(paths.split, manifest)
    keys = cache_probe_features(config, manifest, run, settings=settings)
    store = FeatureStore(config.store_path)
    tasks = {}
    for entry in report["tasks"]:
        task = entry["task"]
        row = {f"{name}_probe": probe(store, key, manifest, task, split, clf=clf, eval_settings=eval_settings)
               for name, key in keys.items()}
        row["finetuned_heads"] = entry["metrics"]["balanced_accuracy"]
        tasks[task] = row
    return {"run": run, "clf": clf, "keys": keys, "split": report["split"], "tasks": tasks}
