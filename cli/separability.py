"""featkit separability: silhouette and k-NN accuracy per task and class, backbones side by side."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, print_json, split_list
from ._explore import BackboneFilterOpt, TasksOpt, VariantFilterOpt, fmt, open_embeddings, text


@friendly
def separability(
    task: str = TasksOpt,
    backbone: str = BackboneFilterOpt,
    variant: str = VariantFilterOpt,
    k: int = typer.Option(10, "--k", min=1, help="Neighbours that vote in k-NN accuracy."),
    max_points: int = typer.Option(10000, "--max-points", min=10, help="Stratified subsample above this."),
    per_class: bool = typer.Option(False, "--per-class", help="Also print silhouette and k-NN recall per class."),
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """How well each cached embedding separates each task's classes (no head trained)."""
    from featkit.explore.separability import SeparabilitySettings, separability as measure

    col, embs = open_embeddings(config_dir, backbone=backbone, variant=variant, every=True)
    keys = [emb.key for emb in embs]
    report = measure(embs, tasks=split_list(task), settings=SeparabilitySettings(k=k, max_points=max_points))
    if json_out:
        print_json(report.to_dict())
        return
    table = Table("task", "n", *(f"{key}\nsilhouette · kNN bal-acc" for key in keys),
                  title=f"separability (cosine; k={k}; group-aware: {col.groups is not None})")
    for task_name in dict.fromkeys(r["task"] for r in report.rows):
        rows = {r["key"]: r for r in report.rows if r["task"] == task_name}
        n = next(iter(rows.values()))["n"]
        table.add_row(task_name, str(n), *(f"{fmt(rows[key]['silhouette'])} · {fmt(rows[key]['knn_balanced_accuracy'])}"
                                           if key in rows else "–" for key in keys))
    console.print(table)
    if per_class:
        detail = Table("features", "task", "class", "n", "silhouette", "kNN recall", title="per class")
        for r in report.per_class:
            detail.add_row(r["key"], r["task"], text(r["class"]), str(r["n"]), fmt(r["silhouette"]), fmt(r["knn_recall"]))
        console.print(detail)
    for s in report.skipped:
        console.print(f"[yellow]skipped[/] {s['key']} {s['task']}: {s['reason']}", highlight=False)
