"""Extraction throughput: featkit extract vs the bare forward pass and vs a naive loop.

    .venv/bin/python benchmarks/bench_extract.py [--source auto|porcelain|demo|folder] [--folder DIR]
        [--images 300] [--backbone mobilenet_v2] [--weights TAG|random] [--device auto]
        [--batch-size N] [--workers N] [--repeats 3] [--json]

In one run, on the same image files, four ways to embed them:

* **featkit**: ``featkit.extract.extract`` with its defaults (DataLoader workers, JPEG
  draft mode, uint8 batches normalised in the main process, BatchNorm folded into the
  convolutions, their weights cast once to the autocast precision, channels_last,
  bf16/fp16 autocast where the hardware has it), writing into a fresh HDF5 store — the
  whole call minus building the backbone;
* **forward**: the same model's forward pass alone, as torchvision builds it (eval,
  channels_last, autocast at featkit's precision and batch size), on a tensor made
  beforehand: no decoding, no store;
* **prepared**: the same, on the network as featkit prepares it (folded, cast): the
  ceiling for featkit's decoding and store, whose cost featkit ÷ prepared shows;
* **naive**: the loop the papers ran — a torchvision ImageFolder-style dataset (PIL open +
  convert RGB, Resize/CenterCrop/ToTensor/Normalize), ``DataLoader(batch_size=32)`` with
  its defaults, fp32, no channels_last, features collected in a list.

Prints (a) featkit ÷ forward (goal ≥ 0.9 on CPU), featkit ÷ prepared, and (b) featkit ÷
naive (goal ≥ 2). They alternate in each round so load from other processes hits them alike; the
best round of each is compared (medians are printed too). On a shared machine compare
these ratios, not absolute images/s. Images: the shared cpac-porcelain set when present
(``--source auto``), else the rendered demo vessels; ``--folder DIR`` takes any tree of
images. On a GPU: ``--backbone resnet50 --weights random`` (throughput does not depend
on the weights' values).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featkit.backbones import create_backbone  # noqa: E402
from featkit.data.manifest import IMAGE_EXTENSIONS, Manifest  # noqa: E402
from featkit.extract import (ExtractSettings, autocast, extract, prepare_model, resolve_device,  # noqa: E402
                             resolve_precision)
from featkit.extract.decode import default_workers  # noqa: E402
from featkit.store import FeatureStore  # noqa: E402

PORCELAIN = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cpac-porcelain"


def image_files(args, scratch: Path) -> tuple[Path, list[str], str]:
    """(root, relative paths, description) of the images to embed."""
    source = args.source
    if source == "auto":
        source = "folder" if args.folder else ("porcelain" if (PORCELAIN / "labels.csv").is_file() else "demo")
    if source == "folder":
        if not args.folder or not Path(args.folder).is_dir():
            sys.exit(f"--source folder needs --folder DIR (got {args.folder!r})")
        root = Path(args.folder).resolve()
        rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        return root, rels[: args.images], f"folder {root}"
    if source == "porcelain":
        with open(PORCELAIN / "labels.csv") as fh:
            rels = [row["image"] for row in csv.DictReader(fh)]
        return PORCELAIN, rels[: args.images], f"cpac-porcelain ({PORCELAIN})"
    from featkit.demo import make_demo_collection

    manifest = make_demo_collection(scratch / "demo", n_objects=(args.images + 1) // 2)
    with open(manifest) as fh:
        rels = [row["image"] for row in csv.DictReader(fh)]
    return manifest.parent, rels[: args.images], "rendered demo vessels (160 px)"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn) -> tuple[float, float]:
    """(wall, cpu) seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


class NaiveImageFolder(Dataset):
    """What torchvision.datasets.ImageFolder does per item: PIL open, convert RGB, transform."""

    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with open(self.paths[i], "rb") as fh:
            img = Image.open(fh).convert("RGB")
        return self.transform(img), 0


def run_naive(model: torch.nn.Module, paths: list[Path], pre, device: torch.device) -> None:
    transform = T.Compose([
        T.Resize(pre.resize_size, interpolation=T.InterpolationMode(pre.interpolation)),
        T.CenterCrop(pre.crop_size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])
    loader = DataLoader(NaiveImageFolder(paths, transform), batch_size=32)
    feats = []
    with torch.no_grad():
        for x, _ in loader:
            feats.append(model(x.to(device)).cpu().numpy())
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert sum(len(f) for f in feats) == len(paths)


def run_featkit(collection: Manifest, backbone, store: FeatureStore, settings: ExtractSettings) -> None:
    summary = extract(collection, backbone, store=store, settings=settings)
    assert summary.computed + summary.failed == len(collection), summary


def make_forward(backbone, n: int, settings: ExtractSettings, device: torch.device, precision: str, *,
                 prepared: bool = True):
    """The bare forward pass over ``n`` images in featkit's batches, on a tensor made beforehand.

    ``prepared``: the network as featkit runs it (BatchNorm folded, weights cast once); else the
    backbone as torchvision builds it (eval, channels_last, autocast casting its weights each batch).
    """
    if prepared:
        model = prepare_model(backbone, device, settings.channels_last, precision=precision)
    else:
        model = copy.deepcopy(backbone).to(device).eval()
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
    crop = backbone.preprocess.crop_size
    batch = torch.randn(settings.batch_size, 3, crop, crop, device=device)
    if settings.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    full, rest = divmod(n, settings.batch_size)
    sizes = [settings.batch_size] * full + ([rest] if rest else [])

    def forward() -> None:
        with torch.inference_mode(), autocast(device, precision):
            for size in sizes:
                model(batch[:size]).float().cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode(), autocast(device, precision):
        model(batch[:2])  # kernels chosen and JIT-compiled before timing
    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("auto", "porcelain", "demo", "folder"), default="auto")
    parser.add_argument("--folder", help="a folder of images (any depth) for --source folder")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default=None, help="weights tag or 'random' (default: the backbone's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="featkit's batch size (default: featkit's)")
    parser.add_argument("--workers", type=int, default=None, help="featkit's workers (default: featkit's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    defaults = ExtractSettings()
    settings = ExtractSettings(progress=False, device=args.device,
                               batch_size=args.batch_size or defaults.batch_size,
                               workers=args.workers if args.workers is not None else defaults.workers)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    backbone = create_backbone(args.backbone, weights=args.weights).eval()
    naive_model = copy.deepcopy(backbone).to(device)  # its own copy: featkit turns its model channels_last

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        root, rels, described = image_files(args, scratch)
        if not rels:
            sys.exit("no images found")
        collection = Manifest(name="bench", root=root, ids=np.array(rels), labels={})
        paths = [root / r for r in rels]
        runs = {
            "naive": lambda: run_naive(naive_model, paths, backbone.preprocess, device),
            "featkit": lambda: run_featkit(collection, backbone, FeatureStore(scratch / f"s{time.time_ns()}.h5"),
                                           settings),
            "forward": make_forward(backbone, len(rels), settings, device, precision, prepared=False),
            "prepared": make_forward(backbone, len(rels), settings, device, precision),
        }
        speeds: dict[str, list[float]] = {k: [] for k in runs}
        cpu_ms: dict[str, list[float]] = {k: [] for k in runs}
        for rnd in range(args.repeats):
            for name, fn in runs.items():
                wall, cpu = timed(fn)
                speeds[name].append(len(rels) / wall)
                cpu_ms[name].append(1000 * cpu / len(rels))
            if not args.json:
                print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s ({cpu_ms[k][-1]:.1f} CPU ms/img)"
                                                      for k, v in speeds.items()), flush=True)

    best = {k: max(v) for k, v in speeds.items()}
    median = {k: statistics.median(v) for k, v in speeds.items()}
    workers = default_workers(device) if settings.workers is None else settings.workers
    result = {
        "images": len(rels), "source": described, "backbone": backbone.name, "weights": backbone.weights,
        "device": str(device), "precision": precision, "batch_size": settings.batch_size, "workers": workers,
        "torch_threads": torch.get_num_threads(), "cpu_cores": len(os.sched_getaffinity(0)),
        "img_per_s_best": best, "img_per_s_median": median, "rounds": speeds,
        "cpu_ms_per_img_median": {k: statistics.median(v) for k, v in cpu_ms.items()},
        "featkit_over_forward": best["featkit"] / best["forward"],
        "featkit_over_prepared": best["featkit"] / best["prepared"],
        "featkit_over_naive": best["featkit"] / best["naive"],
        "featkit_over_forward_median": median["featkit"] / median["forward"],
        "featkit_over_prepared_median": median["featkit"] / median["prepared"],
        "featkit_over_naive_median": median["featkit"] / median["naive"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"\n{len(rels)} images from {described}; {backbone.name} ({backbone.weights}) on {device}, "
          f"featkit precision {precision}, batch {settings.batch_size}, {workers} workers, "
          f"{result['torch_threads']} torch threads, {result['cpu_cores']} cores")
    cpu = result["cpu_ms_per_img_median"]
    print(f"{'':10}{'best img/s':>12}{'median':>10}{'CPU ms/img':>12}")
    for name in ("featkit", "forward", "prepared", "naive"):
        print(f"{name:10}{best[name]:12.1f}{median[name]:10.1f}{cpu[name]:12.2f}")
    goal_a, goal_b = (0.9 if device.type == "cpu" else None), 2.0
    a, b = result["featkit_over_forward"], result["featkit_over_naive"]
    print(f"(a) featkit / forward  = {a:.2f} (median {result['featkit_over_forward_median']:.2f})"
          + (f"  goal >= {goal_a}: {'met' if a >= goal_a else 'NOT met'}" if goal_a else ""))
    print(f"    featkit / prepared = {result['featkit_over_prepared']:.2f} "
          f"(median {result['featkit_over_prepared_median']:.2f}): what decoding and the store cost")
    print(f"(b) featkit / naive    = {b:.2f} (median {result['featkit_over_naive_median']:.2f})"
          f"  goal >= {goal_b}: {'met' if b >= goal_b else 'NOT met'}")


if __name__ == "__main__":
    main()
