"""featkit info: what the store holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, load_config, print_json


@friendly
def info(
    store: Path = typer.Option(None, help="Store to describe (default: from featkit.toml)."),
    failures: bool = typer.Option(False, "--failures", help="List every failed image and why."),
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Summarise the feature store: groups, rows done, failures, provenance."""
    from featkit.store import FeatureStore

    path = store or load_config(config_dir).store_path
    fs = FeatureStore(path)
    summary = fs.info()
    if failures or json_out:
        for group in summary["groups"]:
            group["failures"] = fs.status(group["key"])["failures"]
    if json_out:
        print_json(summary)
        return
    console.print(f"[bold]{summary['path']}[/] ({summary['size_bytes'] / 1e6:.1f} MB in {summary['files']} file(s))")
    table = Table()
    table.add_column("group", no_wrap=True)  # never cut short: it is what other commands take
    for column in ("rows", "done", "failed", "pending", "dim", "dtype"):
        table.add_column(column)
    for g in summary["groups"]:
        table.add_row(g["key"], str(g["rows"]), str(g["done"]), str(g["failed"]), str(g["pending"]), str(g["dim"]),
                      g["dtype"])
    console.print(table)
    for g in summary["groups"]:
        pre = g.get("preprocess", {})
        console.print(f"{g['key']}: weights {g.get('weights')} (sha256 {str(g.get('weights_sha256'))[:10]}), "
                      f"resize {pre.get('resize_size')} → crop {pre.get('crop_size')} {pre.get('interpolation')}, "
                      f"updated {g.get('updated', '?')}", highlight=False)
    if not all(g["checksummed"] for g in summary["groups"]):
        console.print("written before checksums: `featkit verify` rewrites the store with them", highlight=False)
    if failures:
        for g in summary["groups"]:
            for image_id, error in g["failures"].items():
                console.print(f"{g['key']}  {image_id}: {error}", highlight=False)
