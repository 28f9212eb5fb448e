"""featkit similar: the images of the collection most similar to an image (search by image)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Column, Table

from ._common import ConfigOpt, JsonOpt, console, friendly, print_json
from ._explore import BackboneOpt, VariantOpt, fmt, open_embeddings, text


@friendly
def similar(
    query: str = typer.Argument(..., help="An image of the collection (id or path) or any other image file."),
    k: int = typer.Option(12, "--k", "-k", min=1, help="How many results."),
    task: str = typer.Option(None, "--task", "-t", help="Only images labelled for this task..."),
    label: str = typer.Option(None, "--label", help="...with this label (needs --task when there are several)."),
    backbone: str = BackboneOpt,
    variant: str = VariantOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Top-k images by cosine similarity of their cached embeddings; a new file is embedded like the store's rows."""
    _, (emb,) = open_embeddings(config_dir, backbone=backbone, variant=variant)
    frame = emb.similar(query, k=k, task=task, label=label)
    if json_out:
        print_json({"query": query, "key": emb.key, "results": frame.to_dict(orient="records")})
        return
    ids = [text(v) for v in frame["id"]]
    # the image id is what a user copies: never cut or folded, whatever the terminal's width
    image = Column("image", no_wrap=True, min_width=max(map(len, ids), default=5))
    table = Table("rank", "score", image, *emb.tasks,
                  title=f"{emb.key}: {len(frame)} images most similar to {text(query)}")
    for row in frame.to_dict(orient="records"):
        table.add_row(str(row["rank"]), fmt(row["score"], 4), text(row["id"]), *(text(row[t]) for t in emb.tasks))
    console.print(table)
