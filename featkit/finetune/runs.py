"""Where a fine-tuning run lives: ``<runs>/finetune/<run>/`` (``Config.finetune_dir``).

    settings.json     the exact FinetuneSettings (JSON)
    split.json        train / val / test image ids
    last.pt           everything needed to resume (model, optimiser, schedule, history)
    best.pt           the model at the best validation mean balanced accuracy
    trunk.pt          that model's trunk alone + its preprocessing: the variant finetuned-<run>
    history.json      per-epoch losses and metrics;  curves.png  their plot
    report.json       held-out metrics per task;  predictions.csv  per test image
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from featkit.config import Config
from featkit.errors import FeatkitError
from featkit.finetune.settings import (RESUMABLE_CHANGES, Augment, FinetuneSettings, parse_cascade,
                                       parse_task_weights)
from featkit.paths import new_file

VARIANT_PREFIX = "finetuned-"


@dataclass(frozen=True)
class RunPaths:
    dir: Path
    settings: Path
    split: Path
    last: Path
    best: Path
    trunk: Path
    history: Path
    report: Path
    curves: Path
    predictions: Path

    @classmethod
    def at(cls, folder: Path) -> "RunPaths":
        return cls(dir=folder, settings=folder / "settings.json", split=folder / "split.json",
                   last=folder / "last.pt", best=folder / "best.pt", trunk=folder / "trunk.pt",
                   history=folder / "history.json", report=folder / "report.json", curves=folder / "curves.png",
                   predictions=folder / "predictions.csv")


def run_paths(config: Config, run: str) -> RunPaths:
    return RunPaths.at(config.finetune_run_dir(run))


def list_runs(config: Config) -> list[str]:
    root = config.finetune_dir
    return sorted(p.name for p in root.iterdir() if (p / "settings.json").is_file()) if root.is_dir() else []


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    with new_file(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise FeatkitError(f"cannot read checkpoint {path}: {err}") from None


def prepare_run(config: Config, settings: FinetuneSettings, *, resume: bool, overwrite: bool) -> RunPaths:
    """Create the run folder, or check a resumed run was started with compatible settings."""
    paths = run_paths(config, settings.run_name)
    started = paths.settings.is_file()
    if resume:
        if not started or not paths.last.is_file():
            runs = list_runs(config)
            raise FeatkitError(f"no fine-tuning run {settings.run_name!r} with a checkpoint to resume in "
                               f"{config.finetune_dir}; runs there: {', '.join(runs) or '(none)'}")
        check_resumable(FinetuneSettings.load(paths.settings), settings, paths)
    elif started and not overwrite:
        state = "finished" if paths.report.is_file() else "interrupted"
        raise FeatkitError(f"fine-tuning run {settings.run_name!r} already exists ({state}, {paths.dir}); pass "
                           "--resume to continue it, --overwrite to start it again, or --run NAME for a new one")
    elif paths.dir.exists():
        shutil.rmtree(paths.dir)
    paths.dir.mkdir(parents=True, exist_ok=True)
    settings.save(paths.settings)
    return paths


def check_resumable(saved: FinetuneSettings, wanted: FinetuneSettings, paths: RunPaths) -> None:
    for field, what in (("tasks", "tasks"), ("backbone", "backbone"), ("weights", "starting weights")):
        old, new = getattr(saved, field), getattr(wanted, field)
        if old != new:
            show = (lambda v: ",".join(v)) if field == "tasks" else str
            raise FeatkitError(f"cannot resume run {saved.run_name!r}: its checkpoint was trained with {what} "
                               f"{show(old)}, not {show(new)}; start a new run (--run NAME) for {show(new)}")
    changed = {k: v for k, v in saved.differences(wanted).items() if k not in RESUMABLE_CHANGES}
    if changed:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise FeatkitError(f"cannot resume run {saved.run_name!r} with different settings ({listed}); only "
                           f"{', '.join(sorted(RESUMABLE_CHANGES))} may change (saved in {paths.settings})")


def settings_from_flags(config: Config, *, resume: bool = False, **flags) -> FinetuneSettings:
    """Settings from command-line flags (None = not given) over the defaults, or over a resumed run's own.

    ``tasks`` defaults to the collection's; ``augment`` takes names (``"none"`` for none),
    ``cascade`` ``parent:child`` strings and ``task_weights`` ``"task=w,..."``.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    if "tasks" in given:
        given["tasks"] = tuple(given["tasks"])
    if "augment" in given:
        names = given["augment"]
        given["augment"] = Augment.from_names(() if tuple(names) in ((), ("none",)) else tuple(names))
    if "cascade" in given:
        given["cascade"] = tuple(parse_cascade(given["cascade"]))
    if "task_weights" in given:
        given["task_weights"] = parse_task_weights(given["task_weights"])
    if resume:
        run = given.get("run") or FinetuneSettings(tasks=tuple(given.get("tasks", config.tasks))).run_name
        path = run_paths(config, run).settings
        if not path.is_file():
            raise FeatkitError(f"no fine-tuning run {run!r} to resume in {config.finetune_dir}; runs there: "
                               f"{', '.join(list_runs(config)) or '(none)'}")
        return FinetuneSettings.load(path).replace(**given)
    given.setdefault("tasks", tuple(config.tasks))
    return FinetuneSettings(**given)
