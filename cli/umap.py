"""featkit umap: 2-D map of cached embeddings, a PNG per task and an interactive HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import ConfigOpt, JsonOpt, choice, console, friendly, print_json, split_list
from ._explore import BackboneOpt, OutOpt, TasksOpt, VariantOpt, open_embeddings, text
from featkit.explore.umap import KNN_METHODS


@friendly
def umap(
    task: str = TasksOpt,
    backbone: str = BackboneOpt,
    variant: str = VariantOpt,
    neighbors: int = typer.Option(15, "--neighbors", "-k", help="UMAP n_neighbors."),
    min_dist: float = typer.Option(0.1, "--min-dist", help="UMAP min_dist (0..1)."),
    metric: str = typer.Option("cosine", help="Distance in the embedding (any umap-learn metric)."),
    seed: int = typer.Option(0, help="Random seed (reproducible, one thread)."),
    parallel: bool = typer.Option(False, "--parallel", help="No seed: numba threads, faster, not reproducible."),
    knn: str = typer.Option("auto", help=f"Neighbour search: {', '.join(KNN_METHODS)}.",
                            callback=choice("neighbour search", KNN_METHODS)),
    thumbnails: int = typer.Option(1000, "--thumbnails", min=0, help="Hover thumbnails in the HTML (a sample)."),
    html: bool = typer.Option(True, "--html/--no-html", help="Write the interactive page."),
    refresh: bool = typer.Option(False, "--refresh", help="Recompute even if cached in the store."),
    out: Path = OutOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """UMAP of a cached backbone/variant: coordinates cached in the store, PNG per task, HTML with hover images."""
    from featkit.explore.umap import UmapSettings, draw_umap

    _, (emb,) = open_embeddings(config_dir, backbone=backbone, variant=variant)
    key = emb.key
    settings = UmapSettings(n_neighbors=neighbors, min_dist=min_dist, metric=metric,
                            seed=None if parallel else seed, knn=knn, html=html, max_thumbnails=thumbnails)
    report = draw_umap(emb, tasks=split_list(task), out=out, settings=settings, refresh=refresh)
    if json_out:
        print_json(report.to_dict())
        return
    r = report.result
    how = "read from the store" if r.cached else f"computed in {r.seconds:.1f} s and cached"
    console.print(f"[bold]{key}[/]: UMAP of {len(r.ids)} images {how} ({r.aux_name})")
    if r.note:
        console.print(f"  [yellow]{text(r.note)}[/]", highlight=False)
    for task, png in report.pngs.items():
        console.print(f"  {task}: {text(png)}")
    if report.html:
        console.print(f"  interactive: {text(report.html)} ({report.thumbnails} hover thumbnails)")
