"""Fine-tuned vs frozen MobileNetV2 on the clothing set: tasks label and kids, grouped by sender_id.

A group-sampled subset of the shared clothing collection (whole senders, so no
photographer straddles the split) is fine-tuned multi-task on the CPU; then, on the
run's held-out senders, balanced accuracy per task of

    frozen probe        featkit's default path: logreg on cached ImageNet embeddings (224 px)
    frozen probe @size  the same at the fine-tuning image size (when it differs)
    fine-tuned heads    the multi-task model's own heads
    fine-tuned probe    logreg on the fine-tuned trunk's embeddings (variant finetuned-bench)

with the ratio fine-tuned / frozen, and the training throughput. About 10-15 minutes
on 2 CPU cores with the defaults.

    python benchmarks/bench_finetune.py [--images 2400] [--epochs 8] [--image-size 160]
                                        [--train-blocks 8] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FEATKIT_DATASETS", REPO.parent / "shared" / "datasets"))
TASKS = ("label", "kids")


def subset_collection(out: Path, *, images: int, seed: int = 0, source: Path | None = None):
    """Whole senders drawn at random until ``images`` photos: labels.csv + an images link in ``out``."""
    from featkit.config import Config

    source = source or DATASETS / "clothing"
    with open(source / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_sender: dict[str, list[dict]] = {}
    for row in rows:
        by_sender.setdefault(row["sender_id"], []).append(row)
    chosen: list[dict] = []
    for sender in np.random.default_rng(seed).permutation(sorted(by_sender)):
        if len(chosen) >= images:
            break
        chosen.extend(by_sender[sender])
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to(source / "images")
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    config = Config(root=out.resolve(), name="clothing-subset", manifest=Path("labels.csv"), image_column="image",
                    tasks=TASKS, group="sender_id")
    config.write()
    return config


def run_benchmark(out: Path, *, images: int, epochs: int, image_size: int, train_blocks: int | None,
                  batch_size: int = 32, lr: float = 1e-3, patience: int = 3, seed: int = 0,
                  progress: bool = True) -> dict:
    from featkit.data import load_collection
    from featkit.extract import ExtractSettings
    from featkit.finetune import FinetuneSettings, finetune
    from featkit.finetune.probe import probe_comparison

    config = subset_collection(out, images=images, seed=seed)
    collection = load_collection(config)
    settings = FinetuneSettings(tasks=TASKS, run="bench", epochs=epochs, image_size=image_size,
                                train_blocks=train_blocks, batch_size=batch_size, lr=lr, class_weights="balanced",
                                patience=patience, seed=seed, progress=progress)
    start = time.perf_counter()
    result = finetune(config, collection, settings=settings, overwrite=True)
    seconds = time.perf_counter() - start
    comparison = probe_comparison(config, collection, "bench", settings=ExtractSettings(progress=progress))
    trained_images = result.report["epochs_run"] * result.report["split"]["train"]
    comparison.update(images=len(collection), train_seconds=round(seconds, 1),
                      epochs=result.report["epochs_run"], best_epoch=result.report["best_epoch"],
                      epochs_per_s=round(result.report["epochs_run"] / seconds, 4),
                      train_images_per_s=round(trained_images / seconds, 1),
                      settings={"image_size": image_size, "train_blocks": train_blocks, "batch_size": batch_size,
                                "lr": lr, "class_weights": "balanced", "precision": result.report["precision"]})
    return comparison


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    names = [n for n in ("frozen_probe", "frozen_same_size_probe", "finetuned_heads", "finetuned_probe")
             if any(n in row for row in result["tasks"].values())]
    table = Table("task", *names, "fine-tuned / frozen", title=f"held-out balanced accuracy ({result['split']['test']} "
                  f"test images, {result['split']['train']} train; {result['clf']} probes)")
    for task, row in result["tasks"].items():
        best_tuned = max(v for k, v in row.items() if k.startswith("finetuned") and v is not None)
        ratio = best_tuned / row["frozen_probe"] if row.get("frozen_probe") else float("nan")
        table.add_row(task, *(f"{row[n]:.3f}" if row.get(n) is not None else "—" for n in names), f"{ratio:.2f}x")
    console = Console()
    console.print(table)
    console.print(f"fine-tuning: {result['epochs']} epochs (best {result['best_epoch']}) in {result['train_seconds']}s"
                  f" = {result['epochs_per_s']:.4f} epochs/s, {result['train_images_per_s']} train images/s "
                  f"({result['settings']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2400)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--train-blocks", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not (DATASETS / "clothing" / "labels.csv").is_file():
        print(f"clothing dataset not found under {DATASETS} (set FEATKIT_DATASETS)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        result = run_benchmark(args.out or Path(tmp), images=args.images, epochs=args.epochs,
                               image_size=args.image_size, train_blocks=args.train_blocks,
                               batch_size=args.batch_size, lr=args.lr, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
