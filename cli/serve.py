"""featkit serve: the curator workbench, a local web app over the collection's cached embeddings."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import typer

from ._common import ConfigOpt, choice, console, friendly, load_config
from ._explore import text
from featkit.backbones import check_backbone_name


def _has_display() -> bool:
    """Whether a browser can open here (not over SSH on a headless server)."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@friendly
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on. Anything but loopback prints a "
                                                         "token that every request must carry."),
    port: int = typer.Option(8765, "--port", help="Port (0: any free port)."),
    backbone: str = typer.Option(None, "--backbone", "-b", help="Store group shown first (default: the first).",
                                 callback=choice("backbone", (), check=check_backbone_name)),
    variant: str = typer.Option(None, "--variant", help="Variant of that backbone (default: the only one)."),
    open_browser: bool = typer.Option(None, "--open/--no-open", help="Open the page in a browser (default: when "
                                                                       "this machine has a display)."),
    thumb_size: int = typer.Option(192, "--thumb-size", help="Thumbnail size in pixels (cached on disk)."),
    user: str = typer.Option(None, "--user", help="Name written with each correction (default: your login)."),
    config_dir: Path = ConfigOpt,
) -> None:
    """Map, detail, search by image, review queues and label corrections in the browser; Ctrl-C stops it."""
    from featkit.serve.backend import Workbench, WorkbenchSettings
    from featkit.serve.server import serve as run_server

    config = load_config(config_dir)
    workbench = Workbench(config, WorkbenchSettings(backbone=backbone, variant=variant, thumb_size=thumb_size,
                                                    user=user))
    with console.status(f"{workbench.default_key}: UMAP (computed once, then read from the store)…"):
        view = workbench.view()

    def ready(url: str) -> None:
        console.print(f"featkit workbench: {text(workbench.collection.name)}, {len(view.rows)} images of "
                      f"{workbench.default_key}", highlight=False)
        console.print(f"serving {url}  (Ctrl-C stops it)", markup=False, highlight=False, soft_wrap=True)
        if host in ("0.0.0.0", "::"):
            console.print(f"  from another machine: {url.replace(host if host != '::' else '[::]', socket.getfqdn())}",
                          markup=False, highlight=False, soft_wrap=True)
        console.print(f"corrections go to {text(workbench.corrections_file)}", highlight=False, soft_wrap=True)
        if open_browser or (open_browser is None and _has_display()):
            import webbrowser

            webbrowser.open(url)

    run_server(workbench, host=host, port=port, on_ready=ready)
