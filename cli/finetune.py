"""featkit finetune: shared-trunk multi-task fine-tuning; the trunk becomes variant finetuned-<run>."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import (ConfigOpt, JsonOpt, NoCorrectionsOpt, choice, console, friendly, load_config, print_json,
                      split_list)
from featkit.backbones import check_backbone_name, list_backbones
from featkit.extract.settings import PRECISIONS
from featkit.finetune.settings import (AUGMENTATIONS, CLASS_WEIGHTS, OPTIMIZERS, SCHEDULES, TASK_WEIGHTINGS,
                                       FinetuneSettings)

D = FinetuneSettings()  # the defaults live in the settings dataclass; help only quotes them


def _opt(help_text: str, *names: str, **kw):
    return typer.Option(None, *names, help=help_text, **kw)


@friendly
def finetune(
    tasks: str = _opt("Comma-separated tasks (default: all in featkit.toml)."),
    backbone: str = _opt(f"One of: {', '.join(list_backbones())} (default {D.backbone}).", "--backbone", "-b",
                         callback=choice("backbone", (), check=check_backbone_name)),
    weights: str = _opt("Starting weights tag of the backbone (default: its ImageNet weights)."),
    run: str = _opt("Run name (default: the tasks joined by '+'); its trunk becomes variant finetuned-<run>."),
    epochs: int = _opt(f"Most epochs (default {D.epochs}).", min=1),
    batch_size: int = _opt(f"Images per batch (default {D.batch_size}).", "--batch-size", min=1),
    lr: float = _opt(f"Learning rate of the heads (default {D.lr:g}); the trunk gets lr x --trunk-lr-scale."),
    trunk_lr_scale: float = _opt(f"Trunk learning rate relative to the heads' (default {D.trunk_lr_scale:g})."),
    optimizer: str = _opt(f"{' or '.join(OPTIMIZERS)} (default {D.optimizer}).",
                          callback=choice("optimizer", OPTIMIZERS)),
    weight_decay: float = _opt(f"Weight decay (default {D.weight_decay:g}; none on biases and norms)."),
    schedule: str = _opt(f"{', '.join(SCHEDULES)} (default {D.schedule}), after --warmup-epochs.",
                         callback=choice("schedule", SCHEDULES)),
    warmup_epochs: int = _opt(f"Linear warm-up epochs (default {D.warmup_epochs}).", min=0),
    train_blocks: int = _opt("Train only the last K trunk blocks; 0 = heads only (default: all).", min=0),
    unfreeze_every: int = _opt("Gradual unfreezing: one more block every N epochs (default 0: off).", min=0),
    dropout: float = _opt(f"Dropout before each head (default {D.dropout:g})."),
    class_weights: str = _opt(f"Class weights in each loss: {', '.join(CLASS_WEIGHTS)} (default {D.class_weights}).",
                              callback=choice("class weighting", CLASS_WEIGHTS)),
    task_weighting: str = _opt(f"{' or '.join(TASK_WEIGHTINGS)} (learned, Kendall et al. 2018; default {D.task_weighting}).",
                               callback=choice("task weighting", TASK_WEIGHTINGS)),
    task_weights: str = _opt("Per-task loss weights, e.g. glaze=2,ware=0.5."),
    label_smoothing: float = _opt(f"Label smoothing (default {D.label_smoothing:g})."),
    cascade: list[str] = _opt("parent:child — the parent's probabilities feed the child head (repeatable)."),
    augment: str = _opt(f"Comma list of {', '.join(AUGMENTATIONS)}, or none (default {','.join(D.augment.names)})."),
    image_size: int = _opt("Crop size in pixels (default: the backbone's).", min=32),
    patience: int = _opt(f"Stop after N epochs without a better validation mean balanced accuracy (default {D.patience}; 0 off).",
                         min=0),
    val_fraction: float = _opt(f"Validation share when the collection has no val split (default {D.val_fraction:g})."),
    test_fraction: float = _opt(f"Held-out share when the collection has no test split (default {D.test_fraction:g})."),
    seed: int = _opt(f"Seed of the split, the heads and the shuffling (default {D.seed})."),
    device: str = _opt("auto, cpu or cuda[:N]."),
    precision: str = _opt("auto (bf16/fp16 where fast), fp32, bf16 or fp16.", callback=choice("precision", PRECISIONS)),
    workers: int = _opt("DataLoader workers (default: auto).", min=0),
    cache_images: bool = _opt("Keep decoded images in memory (default: when they fit in 2 GiB).",
                              "--cache-images/--no-cache-images"),
    steps_per_epoch: int = _opt("At most N batches per epoch (quick experiments).", min=1),
    resume: bool = typer.Option(False, "--resume", help="Continue run --run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start run --run again from scratch."),
    compare: bool = typer.Option(False, "--compare", help="Also train one single-task model per task on the same "
                                                          "split and print balanced accuracy side by side."),
    no_corrections: bool = NoCorrectionsOpt,
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Fine-tune a pretrained trunk with one head per task; cache it back with `featkit extract --variant`."""
    flags = {k: v for k, v in locals().items()
             if k not in ("resume", "overwrite", "compare", "config_dir", "json_out", "no_corrections")}
    flags.update(tasks=split_list(tasks), augment=split_list(augment), cascade=cascade or None)
    from featkit.data.manifest import load_manifest
    from featkit.finetune import compare_single_multi
    from featkit.finetune import finetune as run_finetune
    from featkit.finetune.runs import settings_from_flags

    config = load_config(config_dir)
    settings = settings_from_flags(config, resume=resume, progress=not json_out, **flags)
    config = config.replace(tasks=settings.tasks)
    collection = load_manifest(config, corrections=not no_corrections)
    if compare:
        result = compare_single_multi(config, collection, settings=settings, resume=resume, overwrite=overwrite)
        return print_json(result) if json_out else _print_compare(result)
    report = run_finetune(config, collection, settings=settings, resume=resume, overwrite=overwrite).report
    if json_out:
        return print_json(report)
    table = Table("task", "test images", "accuracy", "balanced accuracy", "macro-F1", title=f"run {report['run']}")
    for r in report["tasks"]:
        m = r["metrics"]
        table.add_row(r["task"], str(r["n_test"]), _f(m["accuracy"]), _f(m["balanced_accuracy"]), _f(m["macro_f1"]))
    console.print(table)
    stop = " (stopped early)" if report["stopped_early"] else ""
    console.print(f"best epoch {report['best_epoch']} of {report['epochs_run']}{stop}; {report['dir']}")
    console.print(f"next: featkit extract --backbone {report['backbone']} --variant {report['variant']}")


def _f(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _print_compare(result: dict) -> None:
    table = Table("task", "single-task bal.acc", "multi-task bal.acc", "Δ", "single macro-F1", "multi macro-F1",
                  title=f"{result['backbone']}: single- vs multi-task on the same split")
    for r in result["tasks"]:
        table.add_row(r["task"], _f(r["single_balanced_accuracy"]), _f(r["multi_balanced_accuracy"]),
                      _f(r["delta_balanced_accuracy"]), _f(r["single_macro_f1"]), _f(r["multi_macro_f1"]))
    console.print(table)
