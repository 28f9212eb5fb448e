"""featkit outliers: the oddest images of each class, as a CSV and a gallery PNG."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, choice, console, friendly, print_json
from ._explore import BackboneOpt, OneTaskOpt, OutOpt, VariantOpt, fmt, open_embeddings, text
from featkit.explore.outliers import OUTLIER_METHODS


@friendly
def outliers(
    task: str = OneTaskOpt,
    top: int = typer.Option(50, "--top", "-n", min=1, help="How many outliers to list and show."),
    method: str = typer.Option("knn", help=f"{', '.join(OUTLIER_METHODS)}: distance to class-mates, or LOF.",
                               callback=choice("outlier method", OUTLIER_METHODS)),
    k: int = typer.Option(10, "--k", min=1, help="Neighbours within the class."),
    gallery: bool = typer.Option(True, "--gallery/--no-gallery", help="Draw the gallery PNG."),
    backbone: str = BackboneOpt,
    variant: str = VariantOpt,
    out: Path = OutOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Images far from the rest of their class (group-aware), ranked; CSV and gallery PNG."""
    from featkit.embeddings import resolve_task
    from featkit.explore.outliers import OutlierSettings, find_outliers

    col, (emb,) = open_embeddings(config_dir, backbone=backbone, variant=variant)
    key = emb.key
    task = resolve_task(col.manifest, task)
    report = find_outliers(emb, task, settings=OutlierSettings(method=method, k=k, top=top, gallery=gallery), out=out)
    if json_out:
        print_json(report.to_dict())
        return
    table = Table("#", "class", "rank in class", "score ÷ median", "image",
                  title=f"{key} — {report.task}: top {len(report.top_rows)} outliers ({method})")
    for i, r in enumerate(report.top_rows.to_dict(orient="records"), 1):
        table.add_row(str(i), text(r["class"]), str(r["rank_in_class"]), fmt(r["relative_score"], 2), text(r["id"]))
    console.print(table)
    console.print(f"CSV: {text(report.csv)}" + (f"\ngallery: {text(report.gallery)}" if report.gallery else ""))
