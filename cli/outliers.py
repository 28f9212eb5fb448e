"""featkit outliers: the oddest images of each class, as a CSV and a gallery PNG."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, print_json
from ._explore import BackboneOpt, OneTaskOpt, OutOpt, VariantOpt, fmt, open_collection, text
from featkit.explore.embeddings import resolve_task
from featkit.explore.outliers import OUTLIER_METHODS, OutlierSettings, find_outliers


@friendly
def outliers(
    task: str = OneTaskOpt,
    top: int = typer.Option(50, "--top", "-n", min=1, help="How many outliers to list and show."),
    method: str = typer.Option("knn", help=f"{', '.join(OUTLIER_METHODS)}: distance to class-mates, or LOF."),
    k: int = typer.Option(10, "--k", min=1, help="Neighbours within the class."),
    gallery: bool = typer.Option(True, "--gallery/--no-gallery", help="Draw the gallery PNG."),
    backbone: str = BackboneOpt,
    variant: str = VariantOpt,
    out: Path = OutOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Images far from the rest of their class (group-aware), ranked; CSV and gallery PNG."""
    config, collection, (key,) = open_collection(config_dir, backbone=backbone, variant=variant)
    task = resolve_task(config, task, collection)
    settings = OutlierSettings(method=method, k=k, top=top, gallery=gallery)
    report = find_outliers(config, key=key, task=task, settings=settings,
                           out=out, collection=collection)
    if json_out:
        print_json(report.to_dict())
        return
    table = Table("#", "class", "rank in class", "score ÷ median", "image",
                  title=f"{key} — {report.task}: top {len(report.top_rows)} outliers ({method})")
    for i, r in enumerate(report.top_rows.to_dict(orient="records"), 1):
        table.add_row(str(i), text(r["class"]), str(r["rank_in_class"]), fmt(r["relative_score"], 2), text(r["id"]))
    console.print(table)
    console.print(f"CSV: {text(report.csv)}" + (f"\ngallery: {text(report.gallery)}" if report.gallery else ""))
