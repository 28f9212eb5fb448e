"""Single-task baselines against the multi-task model, on one split (the seed papers' table)."""

from __future__ import annotations

import json

from featkit.config import Config
from featkit.data.manifest import Manifest
from featkit.finetune.runs import run_paths
from featkit.finetune.settings import FinetuneSettings
from featkit.finetune.splits import Split
from featkit.finetune.train import finetune
from featkit.paths import slug


def single_run_name(run: str, task: str) -> str:
    return slug(f"{run}.single-{task}")  # the task is a manifest column: any characters


def compare_single_multi(config: Config, collection: Manifest, *, settings: FinetuneSettings,
                         resume: bool = False, overwrite: bool = False) -> dict:
    """Train the multi-task run, then one single-task run per task on the same split.

    Returns (and saves as compare.json in the multi-task run) per-task held-out balanced
    accuracy and macro-F1 side by side. With ``resume``, runs already there continue
    (a finished one is only re-evaluated) and missing ones start.
    """
    def started(run: str) -> bool:
        return resume and run_paths(config, run).last.is_file()

    multi = finetune(config, collection, settings=settings, resume=started(settings.run_name), overwrite=overwrite)
    split = Split.load(run_paths(config, multi.run).split, collection)
    rows, runs = [], {"multi": multi.run}
    for report in multi.report["tasks"]:
        task = report["task"]
        name = single_run_name(multi.run, task)
        single_settings = settings.replace(
            tasks=(task,), run=name, cascade=(),
            task_weights=tuple((t, w) for t, w in settings.task_weights if t == task))
        single = finetune(config, collection, settings=single_settings, resume=started(name), overwrite=overwrite,
                          split=split)
        runs[task] = single.run
        s_metrics, m_metrics = single.report["tasks"][0]["metrics"], report["metrics"]
        rows.append({
            "task": task,
            "single_balanced_accuracy": s_metrics["balanced_accuracy"],
            "multi_balanced_accuracy": m_metrics["balanced_accuracy"],
            "delta_balanced_accuracy": _delta(m_metrics["balanced_accuracy"], s_metrics["balanced_accuracy"]),
            "single_macro_f1": s_metrics["macro_f1"], "multi_macro_f1": m_metrics["macro_f1"],
            "single_best_epoch": single.report["best_epoch"], "multi_best_epoch": multi.report["best_epoch"],
        })
    result = {"backbone": settings.backbone, "runs": runs, "split": multi.report["split"], "tasks": rows}
    run_paths(config, multi.run).dir.joinpath("compare.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
