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
each method. A dataset missing from FEATKIT_DATASETS is skipped with a note. ``shapes``
(not run by default) is generated: stylised shapes like the set of issue 12 (16 shape
classes x 8 fill textures on textured backgrounds), where the frozen probe is weak.

Controlled runs change one featkit setting (``--set trunk_lr_scale=0.1``,
``--set augment.crop_scale=0.5,1``), run some methods only (``--methods featkit``), or
train the plain recipe on the train rows alone (``--plain-rows train``), as the table of
causes in benchmarks/README.md does.

    python benchmarks/bench_finetune.py [--datasets clothing,cpac-porcelain] [--max-images 1200]
                                        [--epochs 6] [--image-size 160] [--seed 0] [--methods ...]
                                        [--set FIELD=VALUE ...] [--plain-rows trainval|train]
                                        [--out DIR] [--json]
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
GENERATED = {"shapes": Source(tasks=("shape", "texture"), group="")}
METHODS = ("frozen_probe", "plain_recipe", "featkit")


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


# -- the generated stylised set -------------------------------------------------------------------
SHAPES = ("triangle", "square", "pentagon", "hexagon", "heptagon", "octagon", "star5", "star6", "star8", "circle",
          "ellipse", "ring", "crescent", "cross", "arrow", "heart")
TEXTURES = ("solid", "stripes", "diagonal", "checker", "dots", "noise", "grid", "waves")


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8: two random colours in pattern ``kind``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    period, angle = rng.uniform(5, 14), rng.uniform(0, np.pi)
    pattern = {
        "solid": np.zeros_like(xx), "stripes": np.sin(yy / period * np.pi) > 0,
        "diagonal": np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / period * np.pi) > 0,
        "checker": (xx // period + yy // period) % 2 == 0,
        "dots": (xx % (1.5 * period) - 0.75 * period) ** 2 + (yy % (1.5 * period) - 0.75 * period) ** 2
        < (0.4 * period) ** 2,
        "noise": rng.random((size, size)) > 0.5, "grid": (xx % (1.5 * period) < 2) | (yy % (1.5 * period) < 2),
        "waves": np.sin(xx / period * np.pi + 3 * np.sin(yy / period)) > 0,
    }[kind].astype(float)[..., None]
    return (pattern * rng.integers(0, 256, 3) + (1 - pattern) * rng.integers(0, 256, 3)).astype(np.uint8)


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 1) in [0, 1]: ``shape`` at a random scale, position and rotation."""
    from PIL import Image, ImageDraw

    r = rng.uniform(0.25, 0.42) * size
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    turn = rng.uniform(0, 2 * np.pi)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)

    def polygon(n: int, inner: float = 1.0) -> list[tuple[float, float]]:
        k = n if inner == 1.0 else 2 * n
        return [(cx + r * (1 if i % 2 == 0 else inner) * np.cos(turn + 2 * np.pi * i / k),
                 cy + r * (1 if i % 2 == 0 else inner) * np.sin(turn + 2 * np.pi * i / k)) for i in range(k)]

    sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "heptagon": 7, "octagon": 8}
    if shape in sides:
        draw.polygon(polygon(sides[shape]), fill=255)
    elif shape.startswith("star"):
        draw.polygon(polygon(int(shape[4:]), inner=0.45), fill=255)
    elif shape in ("circle", "ring", "crescent"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            draw.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=0)
        elif shape == "crescent":
            draw.ellipse([cx - 0.5 * r, cy - 1.1 * r, cx + 1.5 * r, cy + 0.9 * r], fill=0)
    else:  # drawn upright, then turned
        w = 0.35 * r
        if shape == "ellipse":
            draw.ellipse([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=255)
        elif shape == "cross":
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
        elif shape == "arrow":
            draw.rectangle([cx - r, cy - 0.6 * w, cx + 0.2 * r, cy + 0.6 * w], fill=255)
            draw.polygon([(cx + 0.2 * r, cy - 0.6 * r), (cx + r, cy), (cx + 0.2 * r, cy + 0.6 * r)], fill=255)
        else:  # heart
            draw.ellipse([cx - r, cy - 0.8 * r, cx, cy + 0.1 * r], fill=255)
            draw.ellipse([cx, cy - 0.8 * r, cx + r, cy + 0.1 * r], fill=255)
            draw.polygon([(cx - 0.97 * r, cy - 0.2 * r), (cx + 0.97 * r, cy - 0.2 * r), (cx, cy + r)], fill=255)
        mask = mask.rotate(float(np.degrees(turn)), center=(cx, cy))
    return np.asarray(mask)[..., None] / 255.0


def shapes_collection(out: Path, *, images: int, size: int = 160, seed: int = 0):
    """``images`` stylised pictures (balanced shape classes, random fill texture), with featkit.toml."""
    from PIL import Image

    from featkit.config import Config

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        shape, fill = SHAPES[i % len(SHAPES)], TEXTURES[rng.integers(len(TEXTURES))]
        background = _texture(TEXTURES[rng.integers(len(TEXTURES))], size, rng)
        mask = _shape_mask(shape, size, rng)
        picture = mask * _texture(fill, size, rng) + (1 - mask) * background
        name = f"images/{i:05d}.jpg"
        Image.fromarray(picture.astype(np.uint8)).save(out / name, quality=90)
        rows.append({"image": name, "shape": shape, "texture": fill})
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = Config(root=out.resolve(), name="shapes", manifest=Path("labels.csv"), image_column="image",
                    tasks=GENERATED["shapes"].tasks)
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


def featkit_finetune(config, manifest, split, tasks, *, epochs: int, image_size: int, seed: int, progress: bool,
                     changes: dict | None = None) -> tuple[dict[str, float | None], dict]:
    """``featkit finetune --epochs N --image-size S`` with every other setting at its default (or ``changes``)."""
    from featkit.finetune import Augment, FinetuneSettings, finetune

    changes = dict(changes or {})
    augment = {k.split(".", 1)[1]: changes.pop(k) for k in list(changes) if k.startswith("augment.")}
    settings = FinetuneSettings(tasks=tasks, run="bench", epochs=epochs, image_size=image_size, seed=seed,
                                progress=progress, **changes)
    settings = settings.replace(augment=Augment(**{**vars(settings.augment), **augment}))
    report = finetune(config, manifest, settings=settings, split=split, overwrite=True).report
    return {r["task"]: r["metrics"]["balanced_accuracy"] for r in report["tasks"]}, report


def parse_changes(items: list[str]) -> dict:
    """``["trunk_lr_scale=0.1", "augment.crop_scale=0.5,1"]`` -> settings changes (numbers, tuples, strings)."""
    def scalar(text: str):
        try:
            return json.loads(text)
        except ValueError:
            return text

    def value(text: str):
        parsed = [scalar(part.strip()) for part in text.split(",")]
        return tuple(parsed) if len(parsed) > 1 else parsed[0]

    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r} must be FIELD=VALUE, e.g. trunk_lr_scale=0.1")
        out[name.strip()] = value(text)
    return out


# -- one dataset, all methods -------------------------------------------------------------------
def load_dataset(out: Path, name: str, *, max_images: int | None, seed: int):
    """(config, tasks) of a subset of a shared set, or of the generated stylised shapes."""
    if name in GENERATED:
        return shapes_collection(out / name, images=max_images or 1280, seed=seed), GENERATED[name].tasks
    return subset_collection(out / name, name, max_images=max_images, seed=seed), SOURCES[name].tasks


def run_dataset(out: Path, name: str, *, max_images: int | None, epochs: int, image_size: int, seed: int = 0,
                methods: tuple[str, ...] = METHODS, changes: dict | None = None, plain_rows: str = "trainval",
                progress: bool = True) -> dict:
    from featkit.data import load_manifest

    config, tasks = load_dataset(out, name, max_images=max_images, seed=seed)
    manifest = load_manifest(config)
    split = default_split(manifest, tasks, seed)
    plain_fit = split.train if plain_rows == "train" else np.sort(np.concatenate([split.train, split.val]))
    runs = {
        "frozen_probe": lambda: frozen_probe(config, manifest, split, tasks, image_size=image_size, progress=progress),
        "plain_recipe": lambda: plain_recipe(manifest, plain_fit, split.test, tasks, epochs=epochs,
                                             image_size=image_size, seed=seed),
        "featkit": lambda: featkit_finetune(config, manifest, split, tasks, epochs=epochs, image_size=image_size,
                                            seed=seed, progress=progress, changes=changes),
    }
    scores: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    result = {"dataset": name, "images": len(manifest), "split": split.sizes(), "tasks": list(tasks)}
    for method in methods:
        start = time.perf_counter()
        scores[method] = runs[method]()
        seconds[method] = round(time.perf_counter() - start, 1)
        if method == "featkit":
            scores[method], report = scores[method]
            result["featkit"] = {"best_epoch": report["best_epoch"], "epochs_run": report["epochs_run"],
                                 "stopped_early": report["stopped_early"], "precision": report["precision"],
                                 "split": report["split"]}
    result.update(balanced_accuracy={t: {m: scores[m][t] for m in methods} for t in tasks}, seconds=seconds)
    return result


def print_table(results: list[dict], *, methods: tuple[str, ...], title: str) -> None:
    from rich.console import Console
    from rich.table import Column, Table

    both = {"plain_recipe", "featkit"} <= set(methods)
    table = Table(Column("dataset", no_wrap=True), Column("task", no_wrap=True), "test images",
                  *(m.replace("_", " ") for m in methods), *(("featkit - plain",) if both else ()), title=title)
    for result in results:
        for task in result["tasks"]:
            row = result["balanced_accuracy"][task]
            delta = (row["featkit"] - row["plain_recipe"]
                     if both and None not in (row["featkit"], row["plain_recipe"]) else None)
            table.add_row(result["dataset"], task, str(result["split"]["test"]), *(_f(row[m]) for m in methods),
                          *((_f(delta, signed=True),) if both else ()))
        table.add_row("", "wall s", "", *(f"{result['seconds'][m]:.0f}" for m in methods), *(("",) if both else ()),
                      end_section=True)
    Console().print(table)


def _f(value, *, signed: bool = False) -> str:
    return "—" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [*SOURCES, *GENERATED]
    parser.add_argument("--datasets", default=",".join(SOURCES), help=f"Comma list of {', '.join(choices)}.")
    parser.add_argument("--max-images", type=int, default=1200, help="Images per dataset (whole groups).")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the subset, the split and the training.")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"Comma list of {', '.join(METHODS)}.")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="Change one featkit setting (repeatable), e.g. trunk_lr_scale=0.1, augment.jitter=0.")
    parser.add_argument("--plain-rows", choices=("trainval", "train"), default="trainval",
                        help="Rows the plain recipe trains on (train: the rows featkit trains on).")
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    for what, given, valid in (("dataset", names, choices), ("method", methods, METHODS)):
        bad = [v for v in given if v not in valid]
        if bad:
            parser.error(f"unknown {what} {bad[0]!r}; valid choices: {', '.join(valid)}")
    changes = parse_changes(args.set)
    results, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        for name in names:
            if name in SOURCES and not (DATASETS / name / "labels.csv").is_file():
                skipped.append(name)
                print(f"skipping {name}: not found under {DATASETS} (set FEATKIT_DATASETS)", file=sys.stderr)
                continue
            results.append(run_dataset(args.out or Path(tmp), name, max_images=args.max_images, epochs=args.epochs,
                                       image_size=args.image_size, seed=args.seed, methods=methods, changes=changes,
                                       plain_rows=args.plain_rows, progress=not args.json))
    if args.json:
        print(json.dumps({"epochs": args.epochs, "image_size": args.image_size, "max_images": args.max_images,
                          "seed": args.seed, "changes": changes, "plain_rows": args.plain_rows, "results": results,
                          "skipped": skipped}, indent=2))
    elif results:
        changed = "; featkit with " + ", ".join(args.set) if args.set else ""
        print_table(results, methods=methods, title=f"held-out balanced accuracy, one split per dataset "
                    f"({args.epochs} epochs, {args.image_size} px{changed})")
    return 0 if results else 2


if __name__ == "__main__":
    sys.exit(main())
