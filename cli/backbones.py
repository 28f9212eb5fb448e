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
    rows = describe_backbones(pattern)
    if json_out:
        print_json(rows)
        return
    table = Table("name", "dim", "input", "weights", "available here", "file")
    for r in rows:
        table.add_row(r["name"], str(r["dim"]), str(r["input_size"]), r["weights"],
                      "[green]yes[/]" if r["available"] else "[red]no[/] (import or download)", r["file"] or "")
    console.print(table)
