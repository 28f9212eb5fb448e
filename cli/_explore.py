"""Options shared by the exploration commands (umap, separability, outliers, label-issues, duplicates, rank)."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.markup import escape

from ._common import load_config
from featkit.config import Config
from featkit.data import load_collection
from featkit.data.manifest import Collection
from featkit.explore.embeddings import resolve_key, resolve_keys

BackboneOpt = typer.Option(None, "--backbone", "-b", help="Cached backbone (default: the only one in the store).")
VariantOpt = typer.Option(None, "--variant", help="Store variant below the backbone, e.g. imagenet1k_v1 or "
                                                  "finetuned-<run> (default: the only one).")
OneTaskOpt = typer.Option(None, "--task", "-t", help="Task to explore (default: the collection's only task).")
TasksOpt = typer.Option("all", "--task", "-t", help="A task, a,b list, or 'all'.")
OutOpt = typer.Option(None, "--out", help="Folder for figures and CSVs (default: explore/<backbone>__<variant>/ "
                                          "beside featkit.toml).", file_okay=False)
BackboneFilterOpt = typer.Option(None, "--backbone", "-b", help="Only this backbone (default: every cached one).")
VariantFilterOpt = typer.Option(None, "--variant", help="Only this variant (default: every cached one).")


def open_collection(config_dir: Path | None, *, backbone: str | None, variant: str | None,
                    every: bool = False) -> tuple[Config, Collection, list[str]]:
    """featkit.toml, its collection, and the cached group (every matching group when ``every``)."""
    config = load_config(config_dir)
    collection = load_collection(config)
    if every:
        return config, collection, resolve_keys(config, backbone=backbone, variant=variant)
    return config, collection, [resolve_key(config, backbone=backbone, variant=variant)]


def fmt(value, digits: int = 3) -> str:
    """A number for a table cell ('–' for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def text(value) -> str:
    """User data (ids, paths, class names) for a rich table cell: markup-escaped."""
    return "–" if value is None else escape(str(value))
