"""featkit duplicates: near-duplicate images, and the pairs that leak across the split or groups."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, print_json
from ._explore import BackboneOpt, OutOpt, VariantOpt, fmt, open_embeddings, text


@friendly
def duplicates(
    threshold: float = typer.Option(0.97, "--threshold", help="Cosine similarity at or above which a pair is flagged."),
    max_pairs: int = typer.Option(100_000, "--max-pairs", min=1, help="Keep at most this many (most similar) pairs."),
    leaks_only: bool = typer.Option(False, "--leaks-only", help="Print only pairs that leak."),
    show: int = typer.Option(30, "--show", min=0, help="Rows to print (the CSV and --json have them all)."),
    backbone: str = BackboneOpt,
    variant: str = VariantOpt,
    out: Path = OutOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Near-duplicate pairs by cosine similarity; pairs across the split column or groups are leaks."""
    from featkit.explore.duplicates import DuplicateSettings, find_duplicates

    _, (emb,) = open_embeddings(config_dir, backbone=backbone, variant=variant)
    key = emb.key
    report = find_duplicates(emb, settings=DuplicateSettings(threshold=threshold, max_pairs=max_pairs), out=out)
    if json_out:
        print_json(report.to_dict())
        return
    pairs = report.leaks if leaks_only else report.pairs
    table = Table("similarity", "image a", "image b", "leak", "labels differ",
                  title=f"{key}: {len(report.pairs)} pairs ≥ {threshold} among {report.n_images} images, "
                        f"{len(report.leaks)} leak" + (" (truncated)" if report.truncated else ""))
    for row in pairs.head(show).itertuples(index=False):
        table.add_row(fmt(row.similarity, 4), text(row.id_a), text(row.id_b), row.leak_reason or "–",
                      text(row.label_conflict or None),
                      style="bold red" if row.leak else None)
    console.print(table)
    console.print(f"CSV: {text(report.csv)}")
