"""Options shared by the commands that read cached embeddings (umap, separability, outliers, ...)."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.markup import escape

from ._common import choice, open_collection
from featkit.backbones import check_backbone_name

BackboneOpt = typer.Option(None, "--backbone", "-b", help="Cached backbone (default: the only one in the store).",
                           callback=choice("backbone", (), check=check_backbone_name))
VariantOpt = typer.Option(None, "--variant", help="Store variant below the backbone, e.g. imagenet1k_v1 or "
                                                  "finetuned-<run> (default: the only one).")
OneTaskOpt = typer.Option(None, "--task", "-t", help="Task to explore (default: the collection's only task).")
TasksOpt = typer.Option("all", "--task", "-t", help="A task, a,b list, or 'all'.")
OutOpt = typer.Option(None, "--out", help="Folder for figures and CSVs (default: explore/<backbone>__<variant>/ "
                                          "beside featkit.toml).", file_okay=False)
BackboneFilterOpt = typer.Option(None, "--backbone", "-b", help="Only this backbone (default: every cached one).",
                                 callback=choice("backbone", (), check=check_backbone_name))
VariantFilterOpt = typer.Option(None, "--variant", help="Only this variant (default: every cached one).")


def open_embeddings(config_dir: Path | None, *, backbone: str | None, variant: str | None, every: bool = False):
    """The collection of featkit.toml and its cached embeddings (every matching group when ``every``)."""
    col = open_collection(config_dir)
    if every:
        return col, col.all_embeddings(backbone, variant)
    return col, [col.embeddings(backbone, variant)]


def fmt(value, digits: int = 3) -> str:
    """A number for a table cell ('–' for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def text(value) -> str:
    """User data (ids, paths, class names) for a rich table cell: markup-escaped."""
    return "–" if value is None else escape(str(value))
