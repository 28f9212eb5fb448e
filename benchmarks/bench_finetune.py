"""Fine-tuning with featkit's defaults vs a plain recipe vs the frozen probe, on one split per dataset.

For each shared set (``clothing``: tasks label + kids, grouped by sender_id;
``cpac-porcelain``: dynasty, byte-identical copies grouped together) a subset of whole
groups is drawn, featkit's default split is made once (group-aware: test 20 %, then
validation from the rest), and three methods are scored on the same held-out test rows:

    frozen probe   logreg (featkit's fit head, C tuned by inner group CV) on frozen MobileNetV2
                   embeddings cached at the benchmark's image size, trained on train + val rows
    plain recipe   ~30 lines of plain PyTorch written below: the same ImageNet MobileNetV2, one
                   linear head per task, AdamW (trunk 3e-4, heads 1e-3), RandomResizedCrop + flip,
                   bf16 autocast, batch 32, N epochs on train + val rows, no early stopping,
                   evaluated once on the test rows
    featkit        ``featkit.finetune.finetune`` with its defaults (and --epochs, --image-size):
                   trains on the train rows, chooses its epoch on the val rows, scores the test rows

It prints held-out balanced accuracy per dataset x task x method and the wall time of
each method. A dataset missing from FEATKIT_DATASETS is skipped with a note.

    python benchmarks/bench_finetune.py [--datasets clothing,cpac-porcelain] [--max-images 1200]
                                        [--epochs 6] [--image-size 160] [--seed 0] [--out DIR] [--json]
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
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FEATKIT_DATASETS", REPO.parent / "shared" / "datasets"))


class Source(NamedTuple):
    tasks: tuple[str, ...]
    group: str  # column of labels.csv naming the group, or "duplicate_of" (a copy joins its original)


SOURCES = {
    "clothing": Source(tasks=("label", "kids"), group="sender_id"),
    "cpac-porcelain": Source(tasks=("dynasty",), group="duplicate_of"),
}


def _group_of(row: dict, source: Source) -> str:
    if source.group == "duplicate_of":
        return row["duplicate_of"] or row["image"]
    return row[source.group]


def subset_collection(out: Path, name: str, *, max_images: int | None, seed: int = 0,
                      source_dir: Path | None = None):
    """Whole groups drawn at random until ``max_images`` images: labels.csv + an images link in ``out``."""
    from featkit.config import Config

    source, source_dir = SOURCES[name], source_dir or DATASETS / name
    with open(source_dir / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(_group_of(row, source), []).append(row)
    chosen: list[dict] = []
    for group in np.random.default_rng(seed).permutation(sorted(by_group)):
        if max_images is not None and len(chosen) >= max_images:
            break
        chosen.extend({"image": r["image"], "group": group, **{t: r[t] for t in source.tasks}}
                      for r in by_group[group])
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to(source_dir / "images")
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(chosen[0]))
        writer.writeheader()
        writer.writerows(chosen)
    config = Config(root=out.resolve(), name=name, manifest=Path("labels.csv"), image_column="image",
                    tasks=source.tasks, group="group")
    config.write()
    return config


def default_split(manifest, tasks: tuple[str, ...], seed: int):
    """The split ``featkit finetune`` makes with its default fractions."""
    from featkit.finetune import FinetuneSettings
    from featkit.finetune.splits import make_split

    d = FinetuneSettings()
    return make_split(manifest, tasks[0], val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=seed)


# -- the three methods --------------------------------------------------------------------------
def frozen_probe(config, manifest, split, tasks, *, image_size: int, progress: bool) -> dict[str, float | None]:
    """logreg on frozen embeddings at ``image_size``, trained on the train + val rows."""
    from featkit.backbones.variants import load_backbone
    from featkit.extract import ExtractSettings
    from featkit.extract.cache import extract
    from featkit.finetune.probe import probe
    from featkit.store import FeatureStore

    default = load_backbone("mobilenet_v2")
    net = load_backbone("mobilenet_v2", variant=f"{default.weights}-{image_size}px")
    store = FeatureStore(config.store_path)
    key = extract(manifest, net, store=store, settings=ExtractSettings(progress=progress)).key
    return {task: probe(store, key, manifest, task, split) for task in tasks}


def plain_recipe(manifest, train_rows, test_rows, tasks, *, epochs: int, image_size: int,
                 seed: int = 0) -> dict[str, float | None]:
    """A plain PyTorch fine-tune: the loop a practitioner writes first (no early stopping, no schedule)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchvision import transforms as T

    from featkit.backbones import create_backbone
    from featkit.finetune.data import encode_targets
    from featkit.finetune.report import balanced_accuracy

    classes, targets = encode_targets(manifest, tasks)
    torch.manual_seed(seed)
    trunk = create_backbone("mobilenet_v2")  # torchvision's mobilenet_v2, classifier removed, ImageNet weights
    heads = torch.nn.ModuleList(torch.nn.Linear(trunk.dim, len(classes[t])) for t in tasks)
    opt = torch.optim.AdamW([{"params": trunk.parameters(), "lr": 3e-4}, {"params": heads.parameters(), "lr": 1e-3}])
    norm = T.Normalize(trunk.preprocess.mean, trunk.preprocess.std)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])

    class Rows(torch.utils.data.Dataset):
        def __init__(self, rows, tf):
            self.rows, self.tf = rows, tf

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            row = self.rows[i]
            image = Image.open(manifest.path(manifest.ids[row])).convert("RGB")
            return self.tf(image), torch.from_numpy(targets[row])

    loader = torch.utils.data.DataLoader(Rows(train_rows, train_tf), batch_size=32, shuffle=True, drop_last=True,
                                         num_workers=2)
    for _ in range(epochs):
        trunk.train()
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                emb = trunk(x)
                loss = sum(F.cross_entropy(h(emb).float(), y[:, j], ignore_index=-100) for j, h in enumerate(heads))
            opt.zero_grad()
            loss.backward()
            opt.step()
    trunk.eval()
    preds, truth = [], []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in torch.utils.data.DataLoader(Rows(test_rows, test_tf), batch_size=64, num_workers=2):
            emb = trunk(x)
            preds.append(np.stack([h(emb).float().argmax(1).numpy() for h in heads], 1))
            truth.append(y.numpy())
    pred, true = np.concatenate(preds), np.concatenate(truth)
    return {t: balanced_accuracy(true[true[:, j] >= 0, j], pred[true[:, j] >= 0, j]) for j, t in enumerate(tasks)}


def featkit_finetune(config, manifest, split, tasks, *, epochs: int, image_size: int, seed: int,
                     progress: bool) -> tuple[dict[str, float | None], dict]:
    """``featkit finetune --epochs N --image-size S`` with every other setting at its default."""
    from featkit.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(tasks=tasks, run="bench", epochs=epochs, image_size=image_size, seed=seed,
                                progress=progress)
    report = finetune(config, manifest, settings=settings, split=split, overwrite=True).report
    return {r["task"]: r["metrics"]["balanced_accuracy"] for r in report["tasks"]}, report


# -- one dataset, all methods -------------------------------------------------------------------
def run_dataset(out: Path, name: str, *, max_images: int | None, epochs: int, image_size: int, seed: int = 0,
                progress: bool = True) -> dict:
    from featkit.data import load_manifest

    tasks = SOURCES[name].tasks
    config = subset_collection(out / name, name, max_images=max_images, seed=seed)
    manifest = load_manifest(config)
    split = default_split(manifest, tasks, seed)
    fit_rows = np.sort(np.concatenate([split.train, split.val]))
    scores: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    scores["frozen_probe"] = frozen_probe(config, manifest, split, tasks, image_size=image_size, progress=progress)
    seconds["frozen_probe"] = time.perf_counter() - start

    start = time.perf_counter()
    scores["plain_recipe"] = plain_recipe(manifest, fit_rows, split.test, tasks, epochs=epochs,
                                          image_size=image_size, seed=seed)
    seconds["plain_recipe"] = time.perf_counter() - start

    start = time.perf_counter()
    scores["featkit"], report = featkit_finetune(config, manifest, split, tasks, epochs=epochs,
                                                 image_size=image_size, seed=seed, progress=progress)
    seconds["featkit"] = time.perf_counter() - start
    return {"dataset": name, "images": len(manifest), "split": split.sizes(), "tasks": list(tasks),
            "balanced_accuracy": {t: {m: scores[m][t] for m in scores} for t in tasks},
            "seconds": {m: round(s, 1) for m, s in seconds.items()},
            "featkit": {"best_epoch": report["best_epoch"], "epochs_run": report["epochs_run"],
                        "stopped_early": report["stopped_early"], "precision": report["precision"]}}


def print_table(results: list[dict], *, epochs: int, image_size: int) -> None:
    from rich.console import Console
    from rich.table import Table

    methods = ("frozen_probe", "plain_recipe", "featkit")
    table = Table("dataset", "task", "test images", *(m.replace("_", " ") for m in methods), "featkit - plain",
                  title=f"held-out balanced accuracy, one split per dataset ({epochs} epochs, {image_size} px)")
    for result in results:
        for task in result["tasks"]:
            row = result["balanced_accuracy"][task]
            delta = (row["featkit"] - row["plain_recipe"]
                     if None not in (row["featkit"], row["plain_recipe"]) else None)
            table.add_row(result["dataset"], task, str(result["split"]["test"]),
                          *(_f(row[m]) for m in methods), _f(delta, signed=True))
        table.add_row("", "wall s", "", *(f"{result['seconds'][m]:.0f}" for m in methods), "", end_section=True)
    Console().print(table)


def _f(value, *, signed: bool = False) -> str:
    return "—" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(SOURCES), help=f"Comma list of {', '.join(SOURCES)}.")
    parser.add_argument("--max-images", type=int, default=1200, help="Images per dataset (whole groups).")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; valid choices: {', '.join(SOURCES)}")
    results, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        for name in names:
            if not (DATASETS / name / "labels.csv").is_file():
                skipped.append(name)
                print(f"skipping {name}: not found under {DATASETS} (set FEATKIT_DATASETS)", file=sys.stderr)
                continue
            results.append(run_dataset(args.out or Path(tmp), name, max_images=args.max_images, epochs=args.epochs,
                                       image_size=args.image_size, seed=args.seed, progress=not args.json))
    if args.json:
        print(json.dumps({"epochs": args.epochs, "image_size": args.image_size, "max_images": args.max_images,
                          "seed": args.seed, "results": results, "skipped": skipped}, indent=2))
    elif results:
        print_table(results, epochs=args.epochs, image_size=args.image_size)
    return 0 if results else 2


if __name__ == "__main__":
    sys.exit(main())
