"""The featkit command: one module per command, joined here."""

from __future__ import annotations

import typer

from . import backbones, demo, extract, info, init, weights
from . import fit, predict, report
from . import finetune
from . import duplicates, label_issues, outliers, rank, separability, umap
from . import verify
from . import corrections, serve, similar

app = typer.Typer(
    name="featkit",
    help="Cached CNN embeddings and per-task heads for multi-label image collections.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from featkit import __version__

        typer.echo(f"featkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print featkit's version and exit.")) -> None:
    """Cached CNN embeddings and per-task heads for multi-label image collections."""
app.command("init")(init.init)
app.command("extract")(extract.extract)
app.command("info")(info.info)
app.command("backbones")(backbones.backbones)
app.add_typer(weights.app, name="weights")
app.command("demo")(demo.demo)
app.command("fit")(fit.fit)
app.command("report")(report.report)
app.command("predict")(predict.predict)
app.command("finetune")(finetune.finetune)
app.command("umap")(umap.umap)
app.command("separability")(separability.separability)
app.command("outliers")(outliers.outliers)
app.command("label-issues")(label_issues.label_issues)
app.command("duplicates")(duplicates.duplicates)
app.command("rank")(rank.rank)
app.command("verify")(verify.verify)
app.command("similar")(similar.similar)
app.command("serve")(serve.serve)
app.add_typer(corrections.app, name="corrections")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
