"""featkit predict: labels and probabilities for new images from saved heads."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ._common import JsonOpt, console, friendly, print_json
from featkit.config import find_config
from featkit.errors import FeatkitError


@friendly
def predict(
    inputs: list[Path] = typer.Argument(..., help="Images, folders or manifest CSVs."),
    model: list[Path] = typer.Option(..., "--model", "-m", help="Run folder from `featkit fit` (repeat per task)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write predictions as CSV here."),
    image_column: str = typer.Option(None, help="Image column of manifest inputs (default: detected)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N] for embedding new images."),
    min_precision: float = typer.Option(None, "--min-precision", min=0.0, max=1.0,
                                        help="Mark needs_review below the confidence where the model's out-of-fold "
                                             "predictions reach this precision (default: the fit's threshold)."),
    review_below: float = typer.Option(None, "--review-below", min=0.0, max=1.0,
                                       help="Mark needs_review below this confidence."),
    config_dir: Path = typer.Option(None, "--config", file_okay=False,
                                    help="Collection whose store may already hold the images (default: cwd if any)."),
    json_out: bool = JsonOpt,
) -> None:
    """Predict each task's label and probabilities; embeds what the store lacks with the model's backbone."""
    from featkit.api import Collection
    from featkit.predict import PredictSettings, predict_images, write_predictions_csv

    try:
        col = Collection(find_config(config_dir))
    except FeatkitError:
        if config_dir is not None:
            raise
        col = None  # no collection here: embed everything
    settings = PredictSettings(batch_size=batch_size, device=device, image_column=image_column,
                               progress=not json_out, min_precision=min_precision, review_below=review_below)
    result = predict_images(model, inputs, manifest=col.manifest if col else None, store=col.store if col else None,
                            settings=settings)
    if out:
        write_predictions_csv(result, out)
    if json_out:
        print_json(result.to_dict())
        return
    table = Table("image", *result.tasks)
    for row in result.rows:
        cells = [(f"{row[t]['label']} ({row[t]['confidence']:.2f})" + (" [yellow]review[/]"
                                                                      if row[t]["needs_review"] else ""))
                 if t in row else f"[red]{escape(str(row['error']))}[/]" for t in result.tasks]
        table.add_row(row["image"], *cells)
    console.print(table)
    s = result.sources
    console.print(f"{len(result.rows)} images: {s['store']} from the store, {s['embedded']} embedded, "
                  f"{s['failed']} failed" + (f"; written to {out}" if out else ""))
    for task, review in result.review.items():
        below = (f"confidence below {review['threshold']:.3f}" if review["threshold"] is not None else
                 "all of them: no confidence reaches the precision asked")
        console.print(f"{task}: {review['sent_to_review']} of {review['predicted']} predictions sent to review "
                      f"({below}; {review['how']})", highlight=False, soft_wrap=True)
