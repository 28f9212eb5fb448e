"""featkit label-issues: likely mislabelled images from out-of-fold probabilities (confident learning)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import ConfigOpt, JsonOpt, NoCorrectionsOpt, choice, console, friendly, open_collection, print_json
from ._explore import BackboneOpt, OneTaskOpt, OutOpt, VariantOpt, fmt, text
from featkit.explore.label_issues import RANK_BY
from featkit.heads import list_heads, rebalance_choices


@friendly
def label_issues(
    task: str = OneTaskOpt,
    clf: str = typer.Option("logreg", "--clf", help=f"Head for the out-of-fold probabilities: {', '.join(list_heads())}.",
                            callback=choice("head", list_heads)),
    cv: int = typer.Option(5, "--cv", min=2, help="Folds (group-aware when the collection has groups)."),
    c: float = typer.Option(None, "--C", help="Fix the head's C (faster; default: chosen by inner CV)."),
    rebalance: str = typer.Option("none", help=f"{', '.join(rebalance_choices())} (default none: class weights skew "
                                               "the probabilities confident learning reads).",
                                  callback=choice("rebalance", rebalance_choices)),
    rank_by: str = typer.Option("self_confidence", "--rank-by",
                                help=f"{', '.join(RANK_BY)}: p(given label), or it minus the best other (lowest first).",
                                callback=choice("ranking", RANK_BY)),
    show: int = typer.Option(30, "--show", min=0, help="Rows to print (the CSV has them all)."),
    top: int = typer.Option(40, "--top", "-n", min=1, help="Images in the gallery PNG."),
    gallery: bool = typer.Option(True, "--gallery/--no-gallery", help="Draw the gallery PNG."),
    pairs: bool = typer.Option(False, "--pairs", help="Also list images whose labels for two tasks form a pair the "
                                                      "rest of the collection (almost) never shows."),
    backbone: str = BackboneOpt,
    variant: str = VariantOpt,
    out: Path = OutOpt,
    no_corrections: bool = NoCorrectionsOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Rank images whose given label the embedding confidently disagrees with, with the most probable other label.

    With --pairs and no --task on a collection of several tasks, only the label pairs are listed.
    """
    from featkit.embeddings import resolve_task
    from featkit.explore.label_issues import LabelIssueSettings, find_label_issues, label_pair_conflicts

    col = open_collection(config_dir, corrections=not no_corrections)
    emb = col.embeddings(backbone, variant)
    result: dict = {}
    if not (pairs and task is None and len(col.manifest.tasks) > 1):
        settings = LabelIssueSettings(clf=clf, cv=cv, C=c, rebalance=rebalance, rank_by=rank_by, top=top,
                                      gallery=gallery)
        report = find_label_issues(emb, resolve_task(col.manifest, task), settings=settings, out=out)
        result = report.to_dict()
        if not json_out:
            print_issues(report, show)
    if pairs:
        pair_report = label_pair_conflicts(emb, out=out)
        result["pairs"] = pair_report.to_dict()
        if not json_out:
            print_pairs(pair_report, show)
    if json_out:
        print_json(result)


def print_issues(report, show: int) -> None:
    r = report.result
    table = Table("rank", "given", "p(given)", "suggested", "p(suggested)", "image",
                  title=f"{report.key} — {report.task}: {len(report.frame)} likely label issues of {r.n} "
                        f"(estimated noise {r.noise_rate:.1%}), lowest {r.rank_by} first")
    for row in report.frame.head(show).itertuples(index=False):
        table.add_row(str(row.rank), text(row.given), fmt(row.self_confidence), text(row.suggested),
                      fmt(row.suggested_confidence), text(row.id))
    console.print(table)
    for cls, why in report.left_out.items():
        console.print(f"left out: class {text(cls)} — {text(why)}: neither judged nor suggested", highlight=False)
    if report.corrections.get("applied"):
        console.print(f"labels: {report.corrections['applied']} corrected by {text(report.corrections['file'])}",
                      highlight=False)
    console.print(f"probabilities: {r.proba_source}\nCSV: {text(report.csv)}"
                  + (f"\ngallery: {text(report.gallery)}" if report.gallery else ""), highlight=False)


def print_pairs(report, show: int) -> None:
    table = Table("task a", "label a", "task b", "label b", "seen elsewhere", "expected", "image",
                  title=f"{report.key}: {len(report.frame)} images whose labels form a pair (almost) never seen "
                        "outside their group")
    for r in report.frame.head(show).itertuples(index=False):
        table.add_row(text(r.task_a), text(r.label_a), text(r.task_b), text(r.label_b), str(r.support),
                      fmt(r.expected, 1), text(r.id))
    console.print(table)
    console.print(f"CSV: {text(report.csv)}", highlight=False)
