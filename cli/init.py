"""featkit init: describe a collection once, in featkit.toml."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import JsonOpt, console, friendly, print_json, split_list
from featkit.config import CONFIG_NAME, Config
from featkit.errors import FeatkitError


@friendly
def init(
    manifest: Path = typer.Option(None, "--manifest", help="CSV: image path column + one column per task.",
                                  exists=True, dir_okay=False),
    image_folder: Path = typer.Option(None, "--image-folder", help="ImageFolder tree: <dir>/<class>/<image>.",
                                      exists=True, file_okay=False),
    name: str = typer.Option(None, help="Collection name (default: the manifest's folder name)."),
    image_column: str = typer.Option(None, help="Column holding image paths (default: inferred)."),
    tasks: str = typer.Option(None, help="Comma-separated task columns (default: inferred)."),
    group: str = typer.Option(None, help="Group column (object id, photographer); default: inferred."),
    split: str = typer.Option(None, help="Split column (train/val/test); default: inferred."),
    store: Path = typer.Option(None, help="HDF5 store path (default: features/<name>.h5)."),
    force: bool = typer.Option(False, help=f"Overwrite an existing {CONFIG_NAME}."),
    json_out: bool = JsonOpt,
) -> None:
    """Write featkit.toml for a manifest CSV or an ImageFolder tree in the current folder."""
    from featkit.data.manifest import infer_config, load_manifest
    from featkit.paths import safe_name, slug

    root = Path.cwd()
    if (root / CONFIG_NAME).exists() and not force:
        raise FeatkitError(f"{root / CONFIG_NAME} exists; pass --force to overwrite it")
    if (manifest is None) == (image_folder is None):
        raise FeatkitError("give exactly one of --manifest CSV or --image-folder DIR")
    if manifest is not None:
        config, notes = infer_config(manifest, root=root, name=name, image_column=image_column,
                                     tasks=split_list(tasks), group=group, split=split, store=store)
    else:
        folder = image_folder.resolve()
        rel = folder.relative_to(root) if folder.is_relative_to(root) else folder
        config = Config(root=root, name=safe_name(name, what="collection name") if name else slug(folder.name),
                        image_folder=rel, tasks=split_list(tasks) or ("label",), store=store)
        notes = [f"one task, {config.tasks[0]!r}: the class folder name"]
    collection = load_manifest(config)  # validate before writing
    path = config.write()
    summary = {"config": str(path), "images": len(collection), "tasks": list(config.tasks),
               "group": config.group, "split": config.split, "store": str(config.store_path), "notes": notes}
    if json_out:
        print_json(summary)
        return
    for note in notes:
        console.print(f"  inferred {note}")
    console.print(f"wrote [bold]{path}[/]: {len(collection)} images, tasks {', '.join(config.tasks)}; "
                  f"store {config.store_path}")
