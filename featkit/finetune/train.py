"""The fine-tuning loop: shared trunk, per-task heads, early stopping, resumable.

AdamW (or Adam) with decoupled learning rates for heads and trunk, linear warm-up
then a cosine or step schedule (per batch), only the last ``train_blocks`` trunk
blocks trained (optionally one more every ``unfreeze_every`` epochs), autocast in
bf16/fp16 where the hardware has it (fp16 with a gradient scaler), early stopping on
the validation mean balanced accuracy, the best model kept, and a checkpoint after
every epoch from which an interrupted run resumes exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from featkit.backbones import create_backbone
from featkit.config import Config
from featkit.data.corrections import corrections_report
from featkit.data.manifest import Manifest
from featkit.errors import FeatkitError
from featkit.extract.runtime import autocast, resolve_device, resolve_precision
from featkit.finetune.blocks import freeze_batchnorm_stats, set_trainable, trainable_count, trunk_blocks
from featkit.finetune.data import (ImageSource, auto_workers, encode_targets, eval_transform, seeded,
                                   train_transform)
from featkit.finetune.model import IGNORE, MultiTaskLoss, MultiTaskNet, class_weights
from featkit.finetune.report import balanced_accuracy, plot_curves, task_report
from featkit.finetune.runs import VARIANT_PREFIX, RunPaths, atomic_save, load_checkpoint, prepare_run
from featkit.finetune.settings import FinetuneSettings
from featkit.finetune.splits import Split, make_split

CHECKPOINT_FORMAT = 1


@dataclass
class FinetuneResult:
    """What a run produced; ``report`` is what report.json holds."""

    run: str
    key: str  # the store key its embeddings get: <backbone>/finetuned-<run>
    dir: str
    report: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return self.report


def lr_factor(progress: float, settings: FinetuneSettings) -> float:
    """Multiplier of the base learning rates at ``progress`` epochs (fractional)."""
    warm = settings.warmup_epochs
    if warm and progress < warm:
        return (progress + 1e-3) / warm
    if settings.schedule == "constant":
        return 1.0
    if settings.schedule == "step":
        return settings.gamma ** int((progress - warm) // settings.step_size)
    span = max(settings.epochs - warm, 1e-9)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warm) / span)))


def _param_groups(net: MultiTaskNet, criterion: MultiTaskLoss, settings: FinetuneSettings) -> list[dict]:
    """Heads at lr, trunk at lr * trunk_lr_scale; no weight decay on biases, norms and loss weights."""
    groups = []
    for params, lr in ((list(net.heads.parameters()) + list(criterion.parameters()), settings.lr),
                       (list(net.trunk.parameters()), settings.lr * settings.trunk_lr_scale)):
        decay = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]
        groups += [{"params": decay, "lr": lr, "weight_decay": settings.weight_decay},
                   {"params": plain, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _oom_message(settings: FinetuneSettings, epoch: int) -> str:
    smaller = max(1, settings.batch_size // 2)
    return (f"out of GPU memory fine-tuning {settings.backbone} at batch size {settings.batch_size}; rerun with "
            f"--batch-size {smaller} (or a smaller --image-size, or fewer --train-blocks); epochs before {epoch} "
            f"are checkpointed: add --resume to continue run {settings.run_name!r}")


class Trainer:
    """One run's state: model, loss, optimiser, schedule, data, history."""

    def __init__(self, config: Config, collection: Manifest, settings: FinetuneSettings, paths: RunPaths, *,
                 split: Split | None = None) -> None:
        self.settings = s = settings
        self.collection = collection
        self.paths = paths
        self.device = resolve_device(s.device)
        self.precision = resolve_precision(s.precision, self.device)
        self.classes, self.targets = encode_targets(collection, s.tasks)
        if paths.split.is_file():  # a resumed run keeps its split
            split = Split.load(paths.split, collection)
        self.split = split or make_split(collection, s.tasks[0], val_fraction=s.val_fraction,
                                         test_fraction=s.test_fraction, seed=s.seed)
        self.split.save(paths.split, collection)
        self._check_train_classes()
        backbone = create_backbone(s.backbone, weights=s.weights, seed=s.seed)
        backbone.preprocess = backbone.preprocess.at_crop_size(s.image_size)
        self.pre = backbone.preprocess
        self.base_weights = backbone.weights
        self.blocks = trunk_blocks(backbone)
        if s.train_blocks is not None and s.train_blocks > len(self.blocks):
            raise FeatkitError(f"--train-blocks {s.train_blocks} is more than {s.backbone}'s {len(self.blocks)} "
                               f"blocks; valid: 0 (heads only) to {len(self.blocks)}, or leave it unset for all")
        with seeded(s.seed):  # the heads' initial weights, without touching the caller's generator
            self.net = MultiTaskNet(backbone, self.classes, dropout=s.dropout, cascade=s.cascade).to(self.device)
        train_targets = self.targets[self.split.train]
        self.criterion = MultiTaskLoss(
            s.tasks, task_weights=dict(s.task_weights), uncertainty=s.task_weighting == "uncertainty",
            class_weights={t: class_weights(train_targets[:, j], len(self.classes[t]), s.class_weights)
                           for j, t in enumerate(s.tasks)},
            label_smoothing=s.label_smoothing,
        ).to(self.device)
        opt = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(_param_groups(self.net, self.criterion, s))
        rows = np.concatenate([self.split.train, self.split.val, self.split.test])
        self.images = ImageSource(collection, rows, self.pre, cache=s.cache_images,
                                  workers=auto_workers(s.workers, self.device), device=self.device)
        n_batches = len(self.split.train) // s.batch_size if len(self.split.train) > s.batch_size else 1
        self.steps_per_epoch = min(n_batches, s.steps_per_epoch or n_batches)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step / self.steps_per_epoch, self.settings))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.history: list[dict] = []
        self.best = -math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.epoch = 0  # epochs completed
        self.trainable_blocks = 0
        self.failures: dict[str, str] = {}
        self.started = time.perf_counter()

    def _check_train_classes(self) -> None:
        for j, task in enumerate(self.settings.tasks):
            seen = np.unique(self.targets[self.split.train, j])
            seen = seen[seen != IGNORE]
            if len(seen) < 2:
                raise FeatkitError(f"task {task!r} has {len(seen)} class among the {len(self.split.train)} training "
                                   "images of this split; a classifier needs at least two")

    # -- checkpoints -----------------------------------------------------------------
    def _state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "backbone": self.settings.backbone, "tasks": list(self.settings.tasks),
                "classes": {t: list(c) for t, c in self.classes.items()}, "epoch": self.epoch,
                "net": self.net.state_dict(), "criterion": self.criterion.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "history": self.history, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "failures": self.failures}

    def restore(self) -> None:
        """Continue from last.pt; refuse a checkpoint of other tasks, backbone or classes."""
        state = load_checkpoint(self.paths.last)
        s = self.settings
        if state.get("backbone") != s.backbone or tuple(state.get("tasks", ())) != s.tasks:
            raise FeatkitError(
                f"cannot resume from {self.paths.last}: it holds backbone {state.get('backbone')!r} with tasks "
                f"{','.join(state.get('tasks', []))}, not {s.backbone!r} with {','.join(s.tasks)}")
        saved = {t: tuple(c) for t, c in state["classes"].items()}
        if saved != self.classes:
            changed = [t for t in s.tasks if saved.get(t) != self.classes[t]]
            raise FeatkitError(f"cannot resume: the classes of task(s) {', '.join(changed)} changed in the manifest "
                               "since the run started; start a new run")
        self.net.load_state_dict(state["net"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        self.best_epoch, self.bad_epochs, self.failures = state["best_epoch"], state["bad_epochs"], state["failures"]

    def _save_best(self) -> None:
        atomic_save({"net": self.net.state_dict(), "criterion": self.criterion.state_dict(), "epoch": self.epoch},
                    self.paths.best)
        trunk = {k: v.detach().cpu().contiguous() for k, v in self.net.trunk.model.state_dict().items()}
        atomic_save({"backbone": self.settings.backbone, "base_weights": self.base_weights, "run": self.settings.run_name,
                     "preprocess": self.pre.to_dict(), "epoch": self.epoch, "state_dict": trunk}, self.paths.trunk)

    # -- one pass --------------------------------------------------------------------
    def _batches(self, rows: np.ndarray, *, train: bool):
        """(images on the device, normalised; targets with failed images masked) per batch."""
        s = self.settings
        transform = train_transform(self.pre, s.augment) if train else eval_transform(self.pre)
        loader = self.images.loader(rows, transform, batch_size=s.batch_size, shuffle=train,
                                    seed=s.seed * 100_003 + self.epoch)
        for step, (positions, images, errors) in enumerate(loader):
            if train and step >= self.steps_per_epoch:
                break
            targets = torch.from_numpy(self.targets[rows[positions.numpy()]])
            for j, error in enumerate(errors):
                if error:
                    self.failures[self.collection.ids[rows[int(positions[j])]]] = error
                    targets[j] = IGNORE
            x = self.pre.normalize(images.to(self.device, non_blocking=True))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield positions.numpy(), x, targets.to(self.device)

    def train_epoch(self, progress=None) -> dict[str, float]:
        s = self.settings
        count = trainable_count(len(self.blocks), s.train_blocks, s.unfreeze_every, self.epoch)
        set_trainable(self.blocks, count)
        self.net.train()
        self.criterion.train()
        freeze_batchnorm_stats(self.blocks, count)
        sums = {t: 0.0 for t in s.tasks}
        seen = {t: 0 for t in s.tasks}
        task = progress.add_task(f"epoch {self.epoch + 1}/{s.epochs}", total=self.steps_per_epoch,
                                 info="") if progress else None
        with seeded(s.seed * 100_003 + self.epoch):
            for _, x, y in self._batches(self.split.train, train=True):
                with autocast(self.device, self.precision):
                    logits = self.net(x)
                loss, per_task, counts = self.criterion(logits, y)
                self.optimizer.zero_grad(set_to_none=True)
                if loss.requires_grad:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                self.scheduler.step()
                for t, value in per_task.items():
                    sums[t] += float(value) * counts[t]
                    seen[t] += counts[t]
                if progress:
                    info = "  ".join(f"{t} {sums[t] / max(seen[t], 1):.3f}" for t in s.tasks)
                    progress.update(task, advance=1, info=f"loss {info}")
        if progress:
            progress.remove_task(task)
        self.trainable_blocks = count
        return {t: sums[t] / seen[t] for t in s.tasks if seen[t]}

    @torch.inference_mode()
    def predict(self, rows: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Mean CE per task, probabilities per task, targets and row positions (input order)."""
        self.net.eval()
        self.criterion.eval()
        sums = {t: 0.0 for t in self.settings.tasks}
        seen = {t: 0 for t in self.settings.tasks}
        probs: dict[str, list] = {t: [] for t in self.settings.tasks}
        targets, order = [], []
        for positions, x, y in self._batches(rows, train=False):
            with autocast(self.device, self.precision):
                logits = self.net(x)
            _, per_task, counts = self.criterion(logits, y)
            for t in self.settings.tasks:
                probs[t].append(logits[t].float().softmax(1).cpu().numpy())
                if t in per_task:
                    sums[t] += float(per_task[t]) * counts[t]
                    seen[t] += counts[t]
            targets.append(y.cpu().numpy())
            order.append(positions)
        losses = {t: sums[t] / seen[t] for t in self.settings.tasks if seen[t]}
        return losses, {t: np.concatenate(p) for t, p in probs.items()}, np.concatenate(targets), np.concatenate(order)

    def evaluate(self, rows: np.ndarray) -> tuple[dict[str, float], dict[str, float | None]]:
        losses, probs, targets, _ = self.predict(rows)
        ba = {}
        for j, t in enumerate(self.settings.tasks):
            known = targets[:, j] != IGNORE
            ba[t] = balanced_accuracy(targets[known, j], probs[t][known].argmax(1))
        return losses, ba

    # -- the loop --------------------------------------------------------------------
    def fit(self, *, callbacks: Sequence[Callable[[dict], None]] = (), progress=None) -> None:
        s = self.settings
        self.images.preload(progress)
        while self.epoch < s.epochs and not (s.patience and self.bad_epochs >= s.patience):
            tick = time.perf_counter()
            try:
                train_loss = self.train_epoch(progress)
                val_loss, val_ba = self.evaluate(self.split.val)
            except torch.cuda.OutOfMemoryError:
                raise FeatkitError(_oom_message(s, self.epoch + 1)) from None
            self.epoch += 1
            scores = [v for v in val_ba.values() if v is not None]
            mean = float(np.mean(scores)) if scores else None
            improved = mean is not None and mean > self.best + s.min_delta
            if improved:
                self.best, self.best_epoch, self.bad_epochs = mean, self.epoch, 0
                self._save_best()
            else:
                self.bad_epochs += 1
            record = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
                      "trainable_blocks": self.trainable_blocks, "train_loss": train_loss, "val_loss": val_loss,
                      "val_balanced_accuracy": val_ba, "val_mean_balanced_accuracy": mean, "best": improved,
                      "seconds": round(time.perf_counter() - tick, 2)}
            self.history.append(record)
            atomic_save(self._state(), self.paths.last)
            self.paths.history.write_text(json.dumps(self.history, indent=1) + "\n")
            plot_curves(self.history, self.paths.curves, best_epoch=self.best_epoch,
                        title=f"{s.run_name}: {s.backbone}/{VARIANT_PREFIX + s.run_name}")
            if progress:
                progress.console.print(_epoch_line(record, s), highlight=False)
            for callback in callbacks:
                callback(record)
        if self.best_epoch is None:  # no labelled validation row: keep the last model
            self.best_epoch = self.epoch
            self._save_best()

    def finish(self) -> FinetuneResult:
        """Evaluate the best model on the held-out rows; write report.json and predictions.csv."""
        s = self.settings
        best = load_checkpoint(self.paths.best)
        self.net.load_state_dict(best["net"])
        self.criterion.load_state_dict(best["criterion"])
        try:
            _, probs, targets, order = self.predict(self.split.test)
        except torch.cuda.OutOfMemoryError:
            raise FeatkitError(_oom_message(s, self.epoch + 1)) from None
        variant = VARIANT_PREFIX + s.run_name
        reports = []
        for j, t in enumerate(s.tasks):
            known = targets[:, j] != IGNORE
            reports.append(task_report(t, targets[known, j], probs[t][known].argmax(1), self.classes[t],
                                       backbone=s.backbone, variant=variant))
        self._write_predictions(self.split.test[order], probs, targets)
        stopped = bool(s.patience and self.bad_epochs >= s.patience and self.epoch < s.epochs)
        report = {
            "run": s.run_name, "backbone": s.backbone, "base_weights": self.base_weights, "variant": variant,
            "key": f"{s.backbone}/{variant}", "tasks": reports,
            "mean_balanced_accuracy": _mean([r["metrics"]["balanced_accuracy"] for r in reports]),
            "best_epoch": self.best_epoch, "epochs_run": self.epoch, "stopped_early": stopped,
            "val_mean_balanced_accuracy": None if self.best == -math.inf else self.best,
            "split": {**self.split.sizes(), "source": self.split.source}, "blocks": len(self.blocks),
            "preprocess": self.pre.to_dict(), "device": str(self.device), "precision": self.precision,
            "uncertainty_weights": self.criterion.uncertainty_weights(),
            "corrections": corrections_report(self.collection.corrections, s.tasks),
            "failures": [{"id": i, "error": e} for i, e in sorted(self.failures.items())],
            "seconds_this_session": round(time.perf_counter() - self.started, 1),
            "dir": str(self.paths.dir), "trunk": str(self.paths.trunk), "curves": str(self.paths.curves),
        }
        text = json.dumps(report, indent=2)
        self.paths.report.write_text(text + "\n")
        return FinetuneResult(run=s.run_name, key=report["key"], dir=str(self.paths.dir), report=json.loads(text))

    def _write_predictions(self, rows: np.ndarray, probs: dict[str, np.ndarray], targets: np.ndarray) -> None:
        with open(self.paths.predictions, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", *(f"{t}_{col}" for t in self.settings.tasks for col in ("true", "pred", "prob"))])
            for i, row in enumerate(rows):
                cells = [self.collection.ids[row]]
                for j, t in enumerate(self.settings.tasks):
                    k = int(probs[t][i].argmax())
                    true = self.classes[t][targets[i, j]] if targets[i, j] != IGNORE else ""
                    cells += [true, self.classes[t][k], f"{probs[t][i, k]:.4f}"]
                writer.writerow(cells)


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _epoch_line(record: dict, s: FinetuneSettings) -> str:
    parts = []
    for t in s.tasks:
        ba = record["val_balanced_accuracy"].get(t)
        loss = record["train_loss"].get(t)
        parts.append(f"{t} loss {loss:.3f} bal.acc {ba:.3f}" if ba is not None and loss is not None else f"{t} —")
    mean = record["val_mean_balanced_accuracy"]
    mark = " [green]★ best[/]" if record["best"] else ""
    mean_text = f"{mean:.3f}" if mean is not None else "—"
    return (f"epoch {record['epoch']:>3}/{s.epochs}  {' | '.join(parts)}  | val mean bal.acc {mean_text}"
            f"  ({record['trainable_blocks']} blocks, lr {record['lr']:.2e}, {record['seconds']:.0f}s){mark}")


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), transient=False)


def finetune(config: Config, collection: Manifest, *, settings: FinetuneSettings, resume: bool = False,
             overwrite: bool = False, split: Split | None = None,
             callbacks: Sequence[Callable[[dict], None]] = ()) -> FinetuneResult:
    """Fine-tune ``settings.backbone`` on ``settings.tasks``; the trunk becomes variant finetuned-<run>.

    ``split`` fixes the train/val/test rows (default: from the collection, see
    :func:`~featkit.finetune.splits.make_split`). ``callbacks`` get each epoch's record after it is checkpointed (raising there stops
    the run; ``resume=True`` continues it).
    """
    settings.validate()
    for task in settings.tasks:
        collection.task_labels(task)  # unknown task names fail before anything is written
    paths = prepare_run(config, settings, resume=resume, overwrite=overwrite)
    try:
        trainer = Trainer(config, collection, settings, paths, split=split)
    except BaseException:
        if not resume:  # a run that never started leaves nothing behind
            shutil.rmtree(paths.dir, ignore_errors=True)
        raise
    if resume:
        trainer.restore()
    with _progress(settings.progress) as progress:
        trainer.fit(callbacks=callbacks, progress=progress)
        return trainer.finish()
