"""featkit backbones: what can be extracted, and whether weights are here."""

from __future__ import annotations

import typer
from rich.table import Table

from ._common import JsonOpt, console, friendly, print_json
from featkit.backbones import describe_backbones


@friendly
def backbones(
    pattern: str = typer.Argument("*", help="fnmatch pattern, e.g. 'resnet*'."),
    json_out: bool = JsonOpt,
) -> None:
    """List registered backbones: embedding size, input size, default weights and availability."""
    rows = describe_backbones(pattern)  # reads torchvision's weight tables
    if json_out:
        print_json(rows)
        return
    table = Table()
    table.add_column("name", no_wrap=True)  # never wrapped or cut short
    for column in ("dim", "input", "weights", "here"):
        table.add_column(column)
    table.add_column("file", overflow="fold")
    for r in rows:
        table.add_row(r["name"], str(r["dim"]), str(r["input_size"]), r["weights"],
                      "[green]yes[/]" if r["available"] else "[red]no[/]", r["file"] or "")
    console.print(table)
    if not all(r["available"] for r in rows):
        console.print("weights marked no: download them here, or `featkit weights import FILE` from another machine")
