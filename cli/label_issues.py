"""featkit label-issues: likely mislabelled images from out-of-fold probabilities (confident learning)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, NoCorrectionsOpt, choice, console, friendly, open_collection, print_json
from ._explore import BackboneOpt, OneTaskOpt, OutOpt, VariantOpt, fmt, text
from featkit.explore.label_issues import RANK_BY
from featkit.heads import list_heads


@friendly
def label_issues(
    task: str = OneTaskOpt,
    clf: str = typer.Option("logreg", "--clf", help=f"Head for the out-of-fold probabilities: {', '.join(list_heads())}.",
                            callback=choice("head", list_heads)),
    cv: int = typer.Option(5, "--cv", min=2, help="Folds (group-aware when the collection has groups)."),
    c: float = typer.Option(None, "--C", help="Fix the head's C (faster; default: chosen by inner CV)."),
    rank_by: str = typer.Option("self_confidence", "--rank-by", help=f"{', '.join(RANK_BY)} (lowest first).",
                                callback=choice("ranking", RANK_BY)),
    show: int = typer.Option(30, "--show", min=0, help="Rows to print (the CSV has them all)."),
    backbone: str = BackboneOpt,
    variant: str = VariantOpt,
    out: Path = OutOpt,
    no_corrections: bool = NoCorrectionsOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Rank images whose given label the embedding confidently disagrees with, with a suggested label."""
    from featkit.embeddings import resolve_task
    from featkit.explore.label_issues import LabelIssueSettings, find_label_issues

    col = open_collection(config_dir, corrections=not no_corrections)
    emb = col.embeddings(backbone, variant)
    key = emb.key
    task = resolve_task(col.manifest, task)
    report = find_label_issues(emb, task, settings=LabelIssueSettings(clf=clf, cv=cv, C=c, rank_by=rank_by), out=out)
    if json_out:
        print_json(report.to_dict())
        return
    r = report.result
    table = Table("rank", "given", "suggested", "p(given)", "p(suggested)", "margin", "image",
                  title=f"{key} — {report.task}: {len(report.frame)} likely label issues of {r.n} "
                        f"(estimated noise {r.noise_rate:.1%})")
    for row in report.frame.head(show).itertuples(index=False):
        table.add_row(str(row.rank), text(row.given), text(row.suggested), fmt(row.self_confidence),
                      fmt(row.suggested_confidence), fmt(row.margin), text(row.id))
    console.print(table)
    console.print(f"probabilities: {r.proba_source}\nCSV: {text(report.csv)}", highlight=False)
