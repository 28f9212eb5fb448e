"""featkit fit: evaluate a head on cached embeddings, save the run (report, PNG, model)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from ._common import ConfigOpt, JsonOpt, NoCorrectionsOpt, choice, console, friendly, open_collection, print_json
from featkit.backbones import check_backbone_name
from featkit.data.splits import SPLIT_MODES
from featkit.heads import list_heads, rebalance_choices
from featkit.heads.registry import CALIBRATIONS


@friendly
def fit(
    task: str = typer.Option(..., "--task", "-t", help="A task of the collection, a,b list, or 'all'."),
    clf: str = typer.Option("logreg", "--clf", help=f"Head: {', '.join(list_heads())}.",
                            callback=choice("head", list_heads)),
    backbone: str = typer.Option(None, "--backbone", "-b", help="Cached embeddings to use (default: the only ones).",
                                 callback=choice("backbone", (), check=check_backbone_name)),
    variant: str = typer.Option(None, help="Store variant below the backbone (default: the only one)."),
    rebalance: str = typer.Option("auto", help=f"{', '.join(rebalance_choices())}; on training folds only.",
                                  callback=choice("rebalance", rebalance_choices)),
    pca: int = typer.Option(None, "--pca", min=0, help="PCA components inside the pipeline (0: none; "
                                                       "default: lgbm 128 on wide embeddings)."),
    cv: int = typer.Option(5, "--cv", min=2, help="Folds when the collection has no split column."),
    inner_cv: int = typer.Option(3, "--inner-cv", min=2, help="Inner folds for choosing hyperparameters."),
    split: str = typer.Option("auto", help=f"{', '.join(SPLIT_MODES)} (auto: split column, else group-aware "
                                           "folds when there is a group column).",
                              callback=choice("split mode", SPLIT_MODES)),
    param: list[str] = typer.Option(None, "--param", "-p", help="Hyperparameter NAME=V or NAME=V1,V2 (searched), "
                                                                "e.g. C=0.1 or num_leaves=7,15,31."),
    calibration: str = typer.Option("auto", help=f"{', '.join(CALIBRATIONS)} (auto: the one with the lowest ECE "
                                                 "on out-of-fold training rows).",
                                    callback=choice("calibration", CALIBRATIONS)),
    min_precision: float = typer.Option(0.95, "--min-precision", min=0.0, max=1.0,
                                        help="Review threshold: the lowest confidence whose out-of-fold "
                                             "predictions reach this precision."),
    seed: int = typer.Option(0, help="Seed for folds, samplers and models."),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1, help="Threads (default 1: fastest on a shared machine)."),
    no_model: bool = typer.Option(False, "--no-model", help="Evaluate only; skip the final refit and saved model."),
    out: Path = typer.Option(None, "--out", help="Run folder (default: runs/<task>-<clf>-<backbone>-<variant>-<time>)."),
    no_corrections: bool = NoCorrectionsOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Fit and honestly evaluate a head per task on the cached embeddings."""
    from featkit.fit import FitSettings, fit_tasks
    from featkit.heads import parse_params
    from featkit.paths import slug

    settings = FitSettings(cv=cv, inner_cv=inner_cv, split=split, rebalance=rebalance, pca=pca, seed=seed,
                           n_jobs=jobs, params=parse_params(param or [], clf), refit=not no_model,
                           calibration=calibration, min_precision=min_precision)
    col = open_collection(config_dir, corrections=not no_corrections)
    emb = col.embeddings(backbone, variant)
    live = console.is_terminal and not json_out  # a terminal: one live status line; a log: one plain line per step
    with console.status(f"fitting {clf}") if live else contextlib.nullcontext() as status:
        def progress(name: str, done: int, total: int, message: str) -> None:
            if status is not None:
                status.update(f"fitting {clf} on {name}: {message} ({done}/{total} steps)")
            elif not json_out:
                console.print(f"{name} {clf}: {message}", highlight=False, soft_wrap=True)
        results = fit_tasks(emb, task, clf, settings=settings, progress=progress)
    several = len(results) > 1
    for r in results:
        r.save(None if out is None else (out / f"{slug(r.task)}-{clf}" if several else out))
    if json_out:
        print_json(results[0].report if not several else [r.report for r in results])
        return
    for r in results:
        rep, m = r.report, r.metrics
        console.print(f"[bold]{rep['task']}[/] · {rep['clf']} · {rep['backbone']}/{rep['variant']} — "
                      f"balanced acc [bold]{m['balanced_accuracy']:.3f}[/] (chance {m['chance_balanced_accuracy']:.3f}), "
                      f"macro-F1 {m['macro_f1']:.3f}, acc {m['accuracy']:.3f}")
        console.print(f"  {rep['split']['description']}; rebalance {rep['rebalance']['used']} "
                      f"({rep['rebalance']['reason']}); fit {rep['fit_seconds']:.1f} s", highlight=False)
        if rep["corrections"]["applied"]:
            console.print(f"  labels: {rep['corrections']['applied']} changed by {rep['corrections']['file']}",
                          highlight=False)
        cal, review = rep["calibration"], rep["review"]
        console.print(f"  calibration {cal['chosen']}: ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f}; "
                      + (f"review below confidence {review['threshold']:.3f}: {review['kept']} of {review['n']} "
                         f"out-of-fold predictions kept at precision {review['precision_kept']:.3f}"
                         if review["threshold"] is not None else
                         f"precision {review['min_precision']:g} is never reached: every prediction needs review"),
                      highlight=False)
        for name, entry in rep["hyperparameters"].items():
            console.print(f"  {name}: {entry['why']}", highlight=False)
        for warning in rep["warnings"]:
            console.print(f"  [yellow]warning[/] {warning}", highlight=False)
        console.print(f"  → {r.run_dir}")
