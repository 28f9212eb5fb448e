"""featkit corrections: the label decisions recorded beside the manifest (list them, export a corrected manifest)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, console, friendly, load_config, print_json
from ._explore import text

app = typer.Typer(help="Label corrections (corrections.csv beside the manifest; labels.csv is never edited).",
                  no_args_is_help=True)


@app.command("list")
@friendly
def list_corrections(
    task: str = typer.Option(None, "--task", "-t", help="Only this task."),
    history: bool = typer.Option(False, "--all", help="Every decision, not only the latest per image and task."),
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """The decisions in force (the latest per image and task), or the whole history."""
    from featkit.data.corrections import corrections_path, corrections_summary, read_corrections
    from featkit.data.manifest import load_manifest

    config = load_config(config_dir)
    path = corrections_path(config)
    frame = read_corrections(path, latest=not history)
    if task is not None:
        frame = frame[frame["task"] == task]
    summary = corrections_summary(load_manifest(config, corrections=False))
    if json_out:
        print_json({"file": str(path), "summary": summary, "corrections": frame.to_dict(orient="records")})
        return
    table = Table("time", "task", "image", "old", "new", "queue", "user",
                  title=f"{len(frame)} {'decisions' if history else 'corrections in force'} in {text(path)}")
    for row in frame.to_dict(orient="records"):
        table.add_row(row["time"], text(row["task"]), text(row["id"]), text(row["old"] or "unknown"),
                      text(row["new"] or "unknown"), text(row["queue"]), text(row["user"]))
    console.print(table)
    console.print(f"{summary['applied']} labels changed ({', '.join(f'{t}: {n}' for t, n in summary['by_task'].items())})"
                  + (f"; {len(summary['unknown_ids'])} ids not in the collection" if summary["unknown_ids"] else ""),
                  highlight=False)


@app.command("export")
@friendly
def export(
    out: Path = typer.Option(None, "--out", "-o", help="CSV to write (default: <manifest>.corrected.csv beside it)."),
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Write the manifest with every correction applied (image paths relative to the new file)."""
    from featkit.data.corrections import corrections_summary, export_corrected_manifest
    from featkit.data.manifest import load_manifest

    given = load_manifest(load_config(config_dir), corrections=False)
    path = export_corrected_manifest(given, out.absolute() if out else None)
    summary = corrections_summary(given)
    if json_out:
        print_json({"manifest": str(path), **summary})
        return
    console.print(f"corrected manifest: {text(path)} ({summary['applied']} labels changed)", highlight=False)
