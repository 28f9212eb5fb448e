"""Options shared by the exploration commands (umap, separability, outliers, label-issues, duplicates, rank)."""

from __future__ import annotations

import math

import typer
from rich.markup import escape

BackboneOpt = typer.Option(None, "--backbone", "-b", help="Cached backbone (default: the only one in the store).")
VariantOpt = typer.Option(None, "--variant", help="Store variant below the backbone, e.g. imagenet1k_v1 or "
                                                  "finetuned-<run> (default: the only one).")
OneTaskOpt = typer.Option(None, "--task", "-t", help="Task to explore (default: the collection's only task).")
TasksOpt = typer.Option("all", "--task", "-t", help="A task, a,b list, or 'all'.")
OutOpt = typer.Option(None, "--out", help="Folder for figures and CSVs (default: explore/<backbone>__<variant>/ "
                                          "beside featkit.toml).", file_okay=False)
KeysHelp = "Compare these cached groups (default: every backbone/variant in the store)."


def fmt(value, digits: int = 3) -> str:
    """A number for a table cell ('–' for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def text(value) -> str:
    """User data (ids, paths, class names) for a rich table cell: markup-escaped."""
    return "–" if value is None else escape(str(value))
