"""featkit demo: the main job on the embedded default collection."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from ._common import JsonOpt, console, friendly, print_json


@friendly
def demo(
    out: Path = typer.Option(Path("featkit-demo"), help="Folder for the demo collection and its results."),
    backbone: str = typer.Option("mobilenet_v2", help="Backbone to extract with (real weights)."),
    objects: int = typer.Option(150, min=10, help="Vessels to render (two views each)."),
    json_out: bool = JsonOpt,
) -> None:
    """Render a small vessel collection (form, glaze, decoration, period) and run the main job on it."""
    from featkit.demo import run_demo

    results = run_demo(out, backbone=backbone, n_objects=objects, progress=not json_out)
    if json_out:
        print_json(results)
        return
    ex = results["extract"]
    console.print(f"demo collection: {results['collection']} ({results['images']} images)")
    console.print(f"extract {ex['key']}: {ex['computed']} embedded, {ex['already_done']} already done, "
                  f"{ex['failed']} failed, {ex['images_per_s']:.1f} img/s ({ex['precision']})")
    for line in results.get("lines", []):
        console.print(line)
    console.print(f"browse it: featkit serve --config {shlex.quote(results['collection'])}", markup=False,
                  highlight=False, soft_wrap=True)
