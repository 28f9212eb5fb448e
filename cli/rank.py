"""featkit rank: backbones ranked per task by LogME, beside the probe's balanced accuracy."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, print_json, split_list
from ._explore import BackboneFilterOpt, TasksOpt, VariantFilterOpt, fmt, open_embeddings, text


@friendly
def rank(
    task: str = TasksOpt,
    backbone: str = BackboneFilterOpt,
    variant: str = VariantFilterOpt,
    runs: Path = typer.Option(None, "--runs", help="Runs folder of `featkit fit` (default: runs/ beside featkit.toml)."),
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Transferability (LogME) of every cached backbone/variant per task, without training a head."""
    from featkit.explore.rank import rank_backbones

    _, embs = open_embeddings(config_dir, backbone=backbone, variant=variant, every=True)
    report = rank_backbones(embs, tasks=split_list(task), runs_dir=runs)
    if json_out:
        print_json(report.to_dict())
        return
    table = Table("task", "rank", "features", "LogME", "probe bal-acc", "probe rank", "run", title="LogME ranking")
    for r in report.rows:
        table.add_row(r["task"], str(r["rank_logme"]), r["key"], fmt(r["logme"], 4),
                      fmt(r["probe_balanced_accuracy"]), fmt(r["rank_probe"]), text(r["run"]))
    console.print(table)
    for a in report.agreement:
        if a["spearman"] is not None:
            console.print(f"{a['task']}: LogME vs probe over {a['n']} backbones — Spearman {a['spearman']:+.2f}, "
                          f"Kendall {a['kendall']:+.2f}")
        else:
            console.print(f"{a['task']}: {a['n']} fitted probe(s); `featkit fit --task {a['task']}` on two or more "
                          "backbones to check the ranking")
    for s in report.skipped:
        console.print(f"[yellow]skipped[/] {s['key']} {s['task']}: {s['reason']}", highlight=False)
