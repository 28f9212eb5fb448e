"""Extraction throughput: featkit extract vs the pure forward pass on the same device, one run.

    .venv/bin/python benchmarks/bench_gpu.py [--backbones resnet50,mobilenet_v2] [--images 4096]
                                            [--batch-size 256] [--precision auto] [--workers N]
                                            [--compile] [--json]

For each backbone, in this one process:

1. **forward**: the network alone on uint8 batches already on the device (normalise,
   channels_last, autocast, forward, synchronise) — the ceiling;
2. **featkit (gpu decode)**: ``extract`` of ``--images`` generated 500x375 JPEGs (the
   size of an average ImageNet photo) into a fresh store: file reads in DataLoader
   workers, batched nvjpeg decoding, resize/crop on the device, forward, store writes;
3. **featkit (cpu decode)**: the same with PIL decoding in the workers.

It prints img/s and featkit ÷ forward (the issue's goal: >= 0.8, and >= 3,000 img/s
for ResNet50 on one H100). Each featkit run is preceded by a short warm-up run
(worker start, cuDNN plans, compile). Weights are random: speed does not depend on
them, and they need no download. Without CUDA it runs on the CPU with small
defaults; those figures say nothing about the GPU goal.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featkit.backbones import create_backbone  # noqa: E402
from featkit.config import Config  # noqa: E402
from featkit.data import load_manifest  # noqa: E402
from featkit.extract import (ExtractSettings, autocast, extract, prepare_model, resolve_device,  # noqa: E402
                             resolve_precision)
from featkit.store import FeatureStore  # noqa: E402


def make_photos(root: Path, n: int) -> Config:
    """``n`` JPEGs of 500x375 with photo-like smooth content; a manifest and config."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["image,label"]
    for i in range(n):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(root / "images" / f"{i:06d}.jpg", quality=90)
        lines.append(f"images/{i:06d}.jpg,c{i % 10}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return Config(root=root, name="bench", manifest=Path("labels.csv"), tasks=("label",))


def forward_rate(name: str, *, device: torch.device, precision: str, batch_size: int, batches: int,
                 compile_model: bool) -> float:
    backbone = create_backbone(name, weights="random")
    model = prepare_model(backbone, device, True, precision=precision, compile=compile_model)
    size = backbone.preprocess.crop_size
    batch = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)

    def step() -> None:
        x = backbone.preprocess.normalize(batch).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, precision):
            model(x)

    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(device)
    return batches * batch_size / (time.perf_counter() - start)


def featkit_rate(config: Config, name: str, tmp: Path, *, settings: ExtractSettings, warmup: int) -> dict:
    collection = load_manifest(config)
    backbone = create_backbone(name, weights="random")
    extract(collection, backbone, store=FeatureStore(tmp / f"warm-{name}-{settings.gpu_decode}.h5"),
            settings=ExtractSettings(**{**settings.__dict__, "limit": warmup}))
    store = FeatureStore(tmp / f"run-{name}-{settings.gpu_decode}.h5")
    summary = extract(collection, backbone, store=store, settings=settings)
    return {"images_per_s": summary.images_per_s, "computed": summary.computed, "failed": summary.failed,
            "seconds": summary.seconds, "precision": summary.precision}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="resnet50,mobilenet_v2")
    parser.add_argument("--images", type=int, default=4096 if cuda else 192)
    parser.add_argument("--batch-size", type=int, default=256 if cuda else 32)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: featkit's auto)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (both sides)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = resolve_device("auto")
    precision = resolve_precision(args.precision, device)
    decodes = (True, False) if cuda else (False, True)  # on the CPU "gpu decode" is libjpeg via torchvision
    results = []
    with tempfile.TemporaryDirectory(prefix="featkit-gpu-bench-") as tmp:
        config = make_photos(Path(tmp) / "photos", args.images)
        for name in args.backbones.split(","):
            row = {"backbone": name, "device": str(device), "precision": precision,
                   "forward_images_per_s": forward_rate(name, device=device, precision=precision,
                                                        batch_size=args.batch_size,
                                                        batches=20 if cuda else 3, compile_model=args.compile)}
            for gpu_decode in decodes:
                settings = ExtractSettings(batch_size=args.batch_size, workers=args.workers, precision=precision,
                                           progress=False, compile=args.compile, gpu_decode=gpu_decode)
                run = featkit_rate(config, name, Path(tmp), settings=settings, warmup=2 * args.batch_size)
                label = "gpu_decode" if gpu_decode else "cpu_decode"
                row[label] = {**run, "ratio_vs_forward": run["images_per_s"] / row["forward_images_per_s"]}
            results.append(row)
    note = None if cuda else "no CUDA here: CPU figures, which say nothing about the GPU goal"
    if args.json:
        print(json.dumps({"images": args.images, "batch_size": args.batch_size, "compile": args.compile,
                          "gpu": torch.cuda.get_device_name() if cuda else None, "note": note, "results": results},
                         indent=2))
        return
    print(f"device {device} ({torch.cuda.get_device_name() if cuda else 'CPU'}), {precision}, batch "
          f"{args.batch_size}, {args.images} JPEGs of 500x375, compile={args.compile}")
    if note:
        print(f"note: {note}")
    print(f"{'backbone':<14} {'forward img/s':>14} {'featkit gpu-decode':>19} {'ratio':>6} "
          f"{'featkit cpu-decode':>19} {'ratio':>6}")
    for r in results:
        g, c = r["gpu_decode"], r["cpu_decode"]
        print(f"{r['backbone']:<14} {r['forward_images_per_s']:>14.1f} {g['images_per_s']:>19.1f} "
              f"{g['ratio_vs_forward']:>6.2f} {c['images_per_s']:>19.1f} {c['ratio_vs_forward']:>6.2f}")


if __name__ == "__main__":
    main()
