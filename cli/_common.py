"""What every command shares: config lookup with flag overrides, errors, --json output, choices.

Command modules import only what parsing needs (typer, rich, the registries, which
import no torch/sklearn/lightgbm); each command imports the library inside its body.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import typer
from rich.console import Console
from rich.markup import escape

from featkit.config import Config, find_config
from featkit.errors import FeatkitError, choices_message
from featkit.paths import disk_error

console = Console()
err_console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", help="Folder holding featkit.toml (default: the current folder).",
                         file_okay=False)
JsonOpt = typer.Option(False, "--json", help="Print results as JSON on stdout.")


def friendly(func: Callable) -> Callable:
    """Turn FeatkitError into a one-line message and exit 2; never a traceback.

    An OSError that no library call turned into a FeatkitError (a read-only or full disk
    under a write featkit does not wrap) gets the same one line, from :func:`featkit.paths.disk_error`.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (FeatkitError, OSError) as err:
            message = str(err if isinstance(err, FeatkitError) else disk_error(err, writing=False))
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: everything computed so far is saved; rerun to resume")
            raise typer.Exit(130) from None

    return wrapper


NoCorrectionsOpt = typer.Option(False, "--no-corrections",
                                help="Use the labels as labels.csv gives them, ignoring corrections.csv beside it.")


def open_collection(config_dir: Path | None, *, corrections: bool = True, **overrides: Any):
    """The collection (:class:`featkit.api.Collection`) of featkit.toml in ``config_dir`` (default cwd)."""
    from featkit.api import Collection

    return Collection(load_config(config_dir, **overrides), corrections=corrections)


def load_config(config_dir: Path | None, **overrides: Any) -> Config:
    """featkit.toml from ``config_dir`` (default cwd) with non-None ``overrides`` applied.

    A path given as a flag is relative to where the user typed it, not to featkit.toml.
    """
    for key in ("manifest", "image_folder", "store"):
        if overrides.get(key) is not None:
            overrides[key] = Path(overrides[key]).absolute()
    return find_config(config_dir).replace(**overrides)


def choice(kind: str, names: Callable[[], Iterable[str]] | Iterable[str], *,
           check: Callable[[str], Any] | None = None) -> Callable[[Any], Any]:
    """A typer callback refusing, while the arguments are parsed, a value not in ``names`` (a registry's list).

    ``check(value)`` replaces the membership test when names carry suffixes (``resnet50.imagenet1k_v2``).
    """

    def callback(value):
        if value is None:
            return value
        try:
            if check is not None:
                check(value)
            else:
                valid = list(names() if callable(names) else names)
                if value not in valid:
                    raise FeatkitError(choices_message(kind, value, valid))
        except FeatkitError as err:
            raise typer.BadParameter(str(err)) from None
        return value

    return callback


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_default) + "\n")


def _default(obj: Any):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def split_list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())
