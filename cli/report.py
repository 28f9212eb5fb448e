"""featkit report: every fit and fine-tuning run as one table, best per task marked, saved as CSV."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.measure import Measurement
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, load_config, print_json


def _number(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


@friendly
def report(
    runs: Path = typer.Option(None, "--runs", help="Runs folder (default: runs/ beside featkit.toml)."),
    task: str = typer.Option(None, "--task", "-t", help="Only runs of this task."),
    csv: Path = typer.Option(None, "--csv", help="Where to write the table (default: <runs>/runs.csv)."),
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Compare runs (fit and fine-tune): task × head × backbone/variant, best balanced accuracy per task marked."""
    from featkit.report import runs_report

    runs_dir = runs or load_config(config_dir).runs_dir
    result = runs_report(runs_dir, csv_path=csv, task=task)
    if json_out:
        print_json(result)
        return
    table = Table("task", "head", "features", "rebalance", "split", "bal. acc", "macro-F1", "acc", "ECE", "review <",
                  "fit s", "run", title=f"runs in {runs_dir}")
    for column in table.columns:
        column.overflow = "fold"  # in a terminal a long name folds inside its cell; it is never cut
    for r in result["runs"]:
        table.add_row(r["task"], r["clf"], f"{r['backbone']}/{r['variant']}", str(r["rebalance"] or "–"),
                      str(r["split"]), _number(r["balanced_accuracy"], ".3f") + (" ★" if r["best"] else ""),
                      _number(r["macro_f1"], ".3f"), _number(r["accuracy"], ".3f"), _number(r["ece"], ".3f"),
                      _number(r["review_threshold"], ".2f"), _number(r["fit_seconds"], ".1f"), r["run"],
                      style="bold green" if r["best"] else None)
    width = console.width
    if not console.is_terminal:  # a pipe or a log: the table as wide as its longest row, one line per run
        console.width = max(width, Measurement.get(console, console.options.update(max_width=100_000), table).maximum)
    try:
        console.print(table)
    finally:
        console.width = width
    console.print(f"★ best balanced accuracy per task; review <: the confidence below which a prediction needs "
                  f"review; table written to {result['csv']}", soft_wrap=True)
