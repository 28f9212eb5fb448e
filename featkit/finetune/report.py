"""Per-task metrics (the keys of fit's report.json) and learning curves."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from featkit.evaluate import compute_metrics


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    """Balanced accuracy over the rows given; None when there are none."""
    if len(y_true) == 0:
        return None
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true"
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def task_report(task: str, y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...], *,
                backbone: str, variant: str) -> dict:
    """Held-out metrics of one task in fit's report.json shape; ``y_*`` are class indices of labelled rows."""
    out = {"task": task, "clf": "finetune", "backbone": backbone, "variant": variant, "n_test": int(len(y_true))}
    if len(y_true) == 0:
        return {**out, "metrics": {"accuracy": None, "balanced_accuracy": None, "macro_f1": None}, "per_class": {}}
    names = np.asarray(classes, dtype=object)
    return {**out, **compute_metrics(names[y_true], names[y_pred], classes)}


def plot_curves(history: list[dict], path: Path, *, best_epoch: int | None = None, title: str = "") -> Path:
    """Training/validation loss per task and validation balanced accuracy per epoch, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    tasks = list(history[0]["val_balanced_accuracy"]) if history else []
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    colours = {t: f"C{i}" for i, t in enumerate(tasks)}
    for task in tasks:
        loss_ax.plot(epochs, [h["train_loss"].get(task, np.nan) for h in history], "-", color=colours[task],
                     label=f"{task} train")
        loss_ax.plot(epochs, [h["val_loss"].get(task, np.nan) for h in history], "--", color=colours[task],
                     label=f"{task} val")
        acc_ax.plot(epochs, [_nan(h["val_balanced_accuracy"].get(task)) for h in history], "-o", ms=3,
                    color=colours[task], label=task)
    acc_ax.plot(epochs, [_nan(h["val_mean_balanced_accuracy"]) for h in history], "-", color="black", lw=2,
                label="mean")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls=":", label=f"best (epoch {best_epoch})" if ax is acc_ax else None)
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.set_title("loss (train —, validation --)")
    acc_ax.set_ylabel("balanced accuracy")
    acc_ax.set_title("validation balanced accuracy")
    loss_ax.legend(fontsize=7)
    acc_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return Path(path)


def _nan(value):
    return np.nan if value is None else value
