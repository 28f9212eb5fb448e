"""featkit weights: put pretrained weights into the torch hub cache for offline use."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import JsonOpt, console, friendly, print_json

app = typer.Typer(help="Manage pretrained weights in the torch hub cache.", no_args_is_help=True)


@app.command("import")
@friendly
def import_(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A torchvision checkpoint, e.g. resnet50-0676ba61.pth."),
    json_out: bool = JsonOpt,
) -> None:
    """Check FILE against torchvision's published hash prefix and place it in the hub cache."""
    from featkit.backbones.offline import import_weights

    result = import_weights(file)
    if json_out:
        print_json(result)
        return
    console.print(f"imported {file} as {result['cache_path']} (for {', '.join(result['backbones'])})")
