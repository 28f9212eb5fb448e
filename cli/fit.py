"""featkit fit: evaluate a head on cached embeddings, save the run (report, PNG, model)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from ._common import ConfigOpt, JsonOpt, NoCorrectionsOpt, choice, console, friendly, open_collection, print_json
from featkit.backbones import check_backbone_name
from featkit.data.splits import SPLIT_MODES
from featkit.heads import list_heads, rebalance_choices


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
    seed: int = typer.Option(0, help="Seed for folds, samplers and models."),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1, help="Threads (default: lgbm 1, linear heads BLAS's)."),
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
                           n_jobs=jobs, params=parse_params(param or [], clf), refit=not no_model)
    col = open_collection(config_dir, corrections=not no_corrections)
    emb = col.embeddings(backbone, variant)
    with console.status(f"fitting {clf}") if not json_out else contextlib.nullcontext() as status:
        def progress(name: str, done: int, total: int) -> None:
            if status is not None:
                status.update(f"fitting {clf} on {name}: fold {done}/{total} done")
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
        for warning in rep["warnings"]:
            console.print(f"  [yellow]warning[/] {warning}", highlight=False)
        console.print(f"  → {r.run_dir}")
