"""featkit similar: the images of the collection most similar to an image (search by image)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, print_json
from ._explore import BackboneOpt, VariantOpt, fmt, open_collection, text


@friendly
def similar(
    query: str = typer.Argument(..., help="An image of the collection (id or path) or any other image file."),
    k: int = typer.Option(12, "--k", "-k", min=1, help="How many results."),
    task: str = typer.Option(None, "--task", "-t", help="Only images labelled for this task..."),
    label: str = typer.Option(None, "--label", help="...with this label (needs --task)."),
    backbone: str = BackboneOpt,
    variant: str = VariantOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Top-k images by cosine similarity of their cached embeddings; a new file is embedded like the store's rows."""
    from featkit.serve.backend import search_images

    config, collection, (key,) = open_collection(config_dir, backbone=backbone, variant=variant)
    frame = search_images(config, query, key=key, k=k, task=task, label=label)
    if json_out:
        print_json({"query": query, "key": key, "results": frame.to_dict(orient="records")})
        return
    tasks = list(collection.tasks)
    table = Table("rank", "score", "image", *tasks, title=f"{key}: {len(frame)} images most similar to {text(query)}")
    for rank, row in enumerate(frame.to_dict(orient="records"), 1):
        table.add_row(str(rank), fmt(row["score"], 4), text(row["id"]), *(text(row[t]) for t in tasks))
    console.print(table)
