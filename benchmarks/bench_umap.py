"""UMAP on 10k embeddings: featkit vs plain umap-learn, the JIT cache, and the store cache.

    .venv/bin/python benchmarks/bench_umap.py [--n 10000] [--dim 1280] [--parallel]

Prints wall and CPU seconds and ratios measured in this one run (on a shared machine
compare ratios, and CPU seconds, not absolute wall times). Steps:

1. umap imported and warmed on 200 points (numba kernels load from NUMBA_CACHE_DIR;
   the very first run on a machine compiles them and is much slower);
2. featkit's ``umap_coordinates`` on n points through a real store (fit + cache write);
3. plain ``umap.UMAP(...).fit_transform`` with the same parameters (the baseline: its
   NN-descent kernels cannot be cached on disk, so they compile in every process);
4. ``umap_coordinates`` again: read back from the store.

Data: n points in ``dim`` dimensions drawn around 20 cluster centres, made
non-negative like pooled ReLU features.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featkit.api import Collection  # noqa: E402
from featkit.config import Config  # noqa: E402
from featkit.explore.umap import UmapSettings, _import_umap, compute_umap, draw_umap, umap_coordinates  # noqa: E402
from featkit.store import FeatureStore, GroupMeta  # noqa: E402


def make_store(root: Path, X: np.ndarray):
    """A collection of ``len(X)`` synthetic rows (no image files) and its embeddings."""
    ids = [f"img_{i:06d}.jpg" for i in range(len(X))]
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        writer.writerows([i, f"c{k % 20}"] for k, i in enumerate(ids))
    config = Config(root=root, name="bench", manifest=Path("labels.csv"), tasks=("label",))
    meta = GroupMeta(backbone="synthetic", variant="v1", weights="none", weights_sha256="0" * 64, preprocess={},
                     preprocess_fingerprint="none", dim=X.shape[1])
    with FeatureStore(config.store_path).writer() as writer:
        writer.ensure_group(meta, ids)
        for start in range(0, len(ids), 2048):
            writer.write_rows("synthetic/v1", ids[start:start + 2048], X[start:start + 2048])
    return Collection(config).embeddings(key="synthetic/v1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--parallel", action="store_true", help="seed=None: numba threads, not reproducible")
    parser.add_argument("--no-baseline", action="store_true", help="Skip plain umap-learn (e.g. for 100k points).")
    parser.add_argument("--draw", action="store_true", help="Also time the PNG and the HTML page from the cache.")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, args.dim))
    X = np.maximum(centres[rng.integers(0, 20, args.n)] + 0.8 * rng.normal(size=(args.n, args.dim)), 0)
    X = X.astype(np.float32)
    settings = UmapSettings(seed=None if args.parallel else 0, png=False, html=False)

    timings: dict[str, tuple[float, float]] = {}

    def timed(label, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        timings[label] = (time.perf_counter() - wall, time.process_time() - cpu)
        return out

    umap = timed("import + warm-up on 200 points", lambda: (_import_umap(), compute_umap(X[:200], settings))[0])
    with tempfile.TemporaryDirectory() as tmp:
        emb = make_store(Path(tmp), X)
        first = timed("featkit umap_coordinates (fit + cache)", lambda: umap_coordinates(emb, settings=settings))
        if not args.no_baseline:
            timed("plain umap.UMAP.fit_transform",
                  lambda: umap.UMAP(n_components=2, n_neighbors=settings.n_neighbors, min_dist=settings.min_dist,
                                    metric=settings.metric, random_state=settings.seed).fit_transform(X))
        second = timed("featkit again (read from the store)", lambda: umap_coordinates(emb, settings=settings))
        assert second.cached and np.array_equal(first.coords, second.coords)
        if args.draw:  # every point drawn; the synthetic ids have no image files, so no thumbnails
            drawn = timed("PNG + HTML from the cache",
                          lambda: draw_umap(emb, settings=replace(settings, png=True, html=True)))
            print(f"HTML page {drawn.html.stat().st_size / 1e6:.1f} MB for {len(drawn.result.ids)} points; "
                  f"PNG {drawn.pngs['label'].stat().st_size / 1e6:.1f} MB")

    mode = "parallel (seed=None)" if args.parallel else "reproducible (seed=0, one thread)"
    print(f"UMAP of {args.n} x {args.dim} points, {mode}, metric={settings.metric}")
    print(f"  {'':40s} {'wall s':>8s} {'cpu s':>8s}")
    for label, (wall, cpu) in timings.items():
        print(f"  {label:40s} {wall:8.2f} {cpu:8.2f}")
    fit, cached = timings["featkit umap_coordinates (fit + cache)"][0], timings["featkit again (read from the store)"][0]
    if "plain umap.UMAP.fit_transform" in timings:
        print(f"  ratio featkit / plain umap (wall)        {fit / timings['plain umap.UMAP.fit_transform'][0]:8.2f}")
    print(f"  ratio cached / fit (wall)                {cached / fit:8.4f}")


if __name__ == "__main__":
    main()
