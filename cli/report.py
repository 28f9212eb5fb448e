"""featkit report: every run as one table, best per task marked, saved as CSV."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, load_config, print_json


@friendly
def report(
    runs: Path = typer.Option(None, "--runs", help="Runs folder (default: runs/ beside featkit.toml)."),
    task: str = typer.Option(None, "--task", "-t", help="Only runs of this task."),
    csv: Path = typer.Option(None, "--csv", help="Where to write the table (default: <runs>/runs.csv)."),
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Compare runs: task × head × backbone × rebalance, best balanced accuracy per task marked."""
    from featkit.report import runs_report

    runs_dir = runs or load_config(config_dir).runs_dir
    result = runs_report(runs_dir, csv_path=csv, task=task)
    if json_out:
        print_json(result)
        return
    table = Table("task", "clf", "features", "rebalance", "split", "bal. acc", "macro-F1", "acc", "fit s", "run",
                  title=f"runs in {runs_dir}")
    for r in result["runs"]:
        table.add_row(r["task"], r["clf"], f"{r['backbone']}/{r['variant']}", str(r["rebalance"]), str(r["split"]),
                      f"{r['balanced_accuracy']:.3f}" + (" ★" if r["best"] else ""), f"{r['macro_f1']:.3f}",
                      f"{r['accuracy']:.3f}", f"{r['fit_seconds']:.1f}", r["run"],
                      style="bold green" if r["best"] else None)
    console.print(table)
    console.print(f"★ best balanced accuracy per task; table written to {result['csv']}")
