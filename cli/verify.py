"""featkit verify: read every byte of the store; set damaged files aside for extract to redo."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, load_config, print_json


@friendly
def verify(
    store: Path = typer.Option(None, help="Store to check (default: from featkit.toml)."),
    check_only: bool = typer.Option(False, "--check-only", help="Report only; change nothing."),
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Check every stored byte against its checksum. Damaged files are kept aside, their readable rows kept,
    and the rest left for `featkit extract` to recompute. Exit 1 when damage was found."""
    from featkit.store import FeatureStore

    report = FeatureStore(store or load_config(config_dir).store_path).verify(repair=not check_only)
    if json_out:
        print_json(report)
    else:
        _print(report, check_only)
    if report["problems"]:
        raise typer.Exit(1)


def _print(report: dict, check_only: bool) -> None:
    if report["ok"]:
        console.print(f"[green]{report['path']}[/]: every byte of {report['files']} file(s) "
                      f"({report['bytes'] / 2**20:,.1f} MiB) reads back as written", highlight=False)
    else:
        table = Table(title=f"damage in {report['path']}")
        for column in ("file", "group", "what", "images", "error"):
            table.add_column(column)
        folder = Path(report["path"]).parent
        for p in report["problems"]:
            table.add_row(str(Path(p["file"]).relative_to(folder)), p["key"] or "?", p["what"],
                          str(len(p["ids"]) or "unknown"), p["error"])
        console.print(table)
    for path in report["not_checksummed"]:
        console.print(f"{path}: written before checksums; " + ("rewritten with them" if report["repaired"] else
                      "`featkit verify` rewrites it with them"), highlight=False)
    for path in report["set_aside"]:
        console.print(f"set aside: {path} (delete it once the store is whole again)", highlight=False)
    for key, ids in report["recompute"].items():
        named = f"{len(ids)} image(s): {', '.join(ids[:3])}{', …' if len(ids) > 3 else ''}"
        console.print(f"{key}: a rerun of `featkit extract` recomputes {named}" if report["repaired"] else
                      f"{key}: once `featkit verify` sets the damage aside, `featkit extract` recomputes {named}",
                      highlight=False)
    if report["problems"] and any(not p["ids"] for p in report["problems"]):
        console.print("rows whose ids were damaged too are recomputed by `featkit extract` like any missing row",
                      highlight=False)
    if report["log"]["records"]:
        console.print(f"log: {report['log']['records']} record(s) waiting; the next run folds them in")
    if check_only and report["problems"]:
        console.print("nothing changed (--check-only); run `featkit verify` to set the damage aside")
