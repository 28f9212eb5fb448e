"""Peak memory of ``featkit extract`` for a small and a large generated collection.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 1000,20000] [--dim 2048] [--workers 1]
                                               [--backbone wide|mobilenet_v2] [--json]

Each size runs in a fresh subprocess (so one run's memory cannot hide in another's):
it extracts every image into a new store, with a checkpoint every few seconds, and
reports its own peak RSS (``ru_maxrss``); the parent also samples the RSS of the
child and its DataLoader workers together every 50 ms. If extraction held features
in memory, the peak would grow by about ``n x dim x 4`` bytes (printed beside it).

Backbone ``wide`` is a tiny conv net with a ``--dim``-wide embedding on 56 px crops:
it makes the run about the pipeline (decode, batches, log, checkpoints), not about
the network, and makes each row as large as a ResNet50 row. ``mobilenet_v2`` runs the
real network (slow on a CPU: use smaller sizes).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featkit.config import Config  # noqa: E402


def wide_backbone(dim: int):
    """A tiny network with a ``dim``-wide embedding (row size of a big backbone, no compute)."""
    import torch
    from torch import nn

    from featkit.backbones import Backbone, BackboneSpec, Preprocess

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, dim), nn.ReLU())
    spec = BackboneSpec(name="wide_probe", dim=dim, build=lambda tag: model)
    return Backbone(spec, model.eval(), weights="random", weights_sha256="wide-probe-seed0",
                    preprocess=Preprocess(crop_size=56, resize_size=64))


def make_images(folder: Path, n: int, *, size: int = 64) -> list[str]:
    """``n`` small deterministic JPEGs (made once; existing files are kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for i in range(n):
        name = f"img_{i:06d}.jpg"
        path = folder / name
        if not path.exists():
            pixels = np.empty((size, size, 3), np.float32)
            pixels[..., 0] = (ramp[None, :] + i * 37) % 256  # colour ramps that differ per image
            pixels[..., 1] = (ramp[:, None] + i * 91) % 256
            pixels[..., 2] = (i * 13) % 256
            Image.fromarray(pixels.astype(np.uint8)).save(path, quality=85)
        names.append(name)
    return names


def write_collection(root: Path, names: list[str]) -> Config:
    """A manifest of ``root/images/<names>`` and its config (store features/bench<n>.h5)."""
    manifest = f"labels_{len(names)}.csv"
    with open(root / manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        writer.writerows([f"images/{n}", f"c{k % 7}"] for k, n in enumerate(names))
    return Config(root=root, name=f"bench{len(names)}", manifest=Path(manifest), tasks=("label",))


def child(args: argparse.Namespace) -> None:
    """One extraction; prints its summary and peak RSS as JSON on the last line."""
    from featkit.backbones import create_backbone
    from featkit.data import load_manifest
    from featkit.extract import ExtractSettings, extract
    from featkit.store import FeatureStore

    config = write_collection(Path(args.root), make_images(Path(args.root) / "images", args.n))
    backbone = wide_backbone(args.dim) if args.backbone == "wide" else create_backbone(args.backbone)
    settings = ExtractSettings(batch_size=64, workers=args.workers, device="cpu", precision="fp32",
                               progress=False, checkpoint_seconds=5.0)
    summary = extract(load_manifest(config), backbone, store=FeatureStore(config.store_path), settings=settings)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": args.n, "computed": summary.computed, "failed": summary.failed,
                      "seconds": summary.seconds, "images_per_s": summary.images_per_s,
                      "store_bytes": config.store_path.stat().st_size, "peak_rss_main": peak_kib * 1024}))


def run_size(work: Path, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--root", str(work), "--n", str(n),
           "--dim", str(args.dim), "--workers", str(args.workers), "--backbone", args.backbone]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    tree_peak = 0
    while proc.poll() is None:
        try:
            procs = [watched, *watched.children(recursive=True)]
            tree_peak = max(tree_peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out = proc.stdout.read().strip().splitlines()
    if proc.returncode != 0 or not out:
        raise SystemExit(f"extraction of {n} images failed (exit {proc.returncode})")
    result = json.loads(out[-1])
    result["peak_rss_tree"] = tree_peak
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backbone", default="wide")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    sizes = [int(s) for s in args.sizes.split(",")]
    dim = args.dim if args.backbone == "wide" else None
    with tempfile.TemporaryDirectory(prefix="featkit-mem-") as tmp:
        make_images(Path(tmp) / "images", max(sizes))  # once, outside the measured runs
        results = [run_size(Path(tmp), n, args) for n in sizes]
    mib = 2**20
    for r in results:
        r["features_bytes"] = r["n"] * (dim or 0) * 4
    small, large = results[0], results[-1]
    ratio = {k: large[k] / small[k] for k in ("peak_rss_main", "peak_rss_tree")}
    if args.json:
        print(json.dumps({"backbone": args.backbone, "dim": dim, "workers": args.workers, "runs": results,
                          "ratio_large_vs_small": ratio}, indent=2))
        return
    print(f"backbone {args.backbone} (dim {dim or 'its own'}), {args.workers} DataLoader worker(s), batch 64, "
          "checkpoint every 5 s")
    print(f"{'images':>8} {'features MiB':>13} {'peak RSS main MiB':>18} {'peak RSS +workers MiB':>22} "
          f"{'store MiB':>10} {'img/s':>8}")
    for r in results:
        print(f"{r['n']:>8} {r['features_bytes'] / mib:>13.1f} {r['peak_rss_main'] / mib:>18.1f} "
              f"{r['peak_rss_tree'] / mib:>22.1f} {r['store_bytes'] / mib:>10.1f} {r['images_per_s']:>8.1f}")
    print(f"peak RSS {large['n']} vs {small['n']} images: main x{ratio['peak_rss_main']:.3f}, "
          f"with workers x{ratio['peak_rss_tree']:.3f} (features grew x{large['n'] / small['n']:.0f})")


if __name__ == "__main__":
    main()
