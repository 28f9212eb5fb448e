"""What a checkpoint, an aux write and a no-op run cost in a 1M-row store and in a 2k-row one, new code and old.

    flock /tmp/featkit-bench.lock nice -n 5 .venv/bin/python benchmarks/bench_store.py
        [--rows 1000000] [--small 2000] [--dim 1280] [--batch 256] [--aux-mb 8] [--old main] [--json]

For each store implementation (this tree's ``featkit.store``, and the one at git ref ``--old``,
loaded from ``git show <ref>:featkit/store.py``; ``--old none`` skips it) and each size, it
writes that many synthetic float32 rows through the store's own writer, then measures,
in one writer session on that store:

* checkpoint: fold one logged batch of ``--batch`` new rows (``StoreWriter.checkpoint``);
* aux write: ``write_aux`` of an ``--aux-mb`` array, then a checkpoint (what `featkit umap`
  does to cache its coordinates);
* no-op run: what `featkit extract` does when every row is done (open a writer,
  ``ensure_group`` with the same ids, read the status, close).

Each with its wall time, the peak extra disk (the store folder's size, sampled every 2 ms
and at every fsync, minus its size just before) and the bytes of store files it created or
rewrote. Scratch stores live in ``--scratch`` (default: a temporary folder) and each is
deleted as soon as it is measured; the 1M store needs about 3x its 4.8 GiB free.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import featkit.store as new_store  # noqa: E402
from featkit.backbones import Preprocess  # noqa: E402

KEY = "synthetic/v1"
MIB = 2**20


def old_store(ref: str, folder: Path):
    """featkit/store.py as it was at ``ref``, imported as its own module."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:featkit/store.py"], capture_output=True,
                            text=True, check=True).stdout
    path = folder / "store_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("store_old", path)
    module = sys.modules["store_old"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass  # renamed or deleted while we looked
    return total


def file_states(folder: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith((".lock", ".owner")):
                continue  # the writer's lock, not the store
            st = os.stat(os.path.join(root, name))
            out[os.path.join(root, name)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


class Measure:
    """Wall time, peak extra bytes in ``folder`` and bytes of files created or rewritten, around a block."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> Measure:
        self.before_files = file_states(self.folder)
        self.before = self.peak = folder_bytes(self.folder)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._real_fsync = os.fsync
        os.fsync = self._fsync  # a file is at its largest when it is fsynced, just before its rename
        self._thread.start()
        self.start = time.perf_counter()
        return self

    def _fsync(self, fd: int) -> None:
        self.peak = max(self.peak, folder_bytes(self.folder))
        self._real_fsync(fd)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, folder_bytes(self.folder))

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        self._stop.set()
        self._thread.join()
        os.fsync = self._real_fsync
        after = file_states(self.folder)
        self.peak_extra = max(self.peak, folder_bytes(self.folder)) - self.before
        self.written = sum(size for path, (ino, mtime, size) in after.items()
                           if self.before_files.get(path, (None,))[:2] != (ino, mtime))

    def result(self) -> dict:
        return {"seconds": round(self.seconds, 4), "peak_extra_bytes": self.peak_extra, "written_bytes": self.written}


def measure_store(module, folder: Path, rows: int, args: argparse.Namespace) -> dict:
    """Build a ``rows``-row store with ``module``'s writer, then measure the three operations on it."""
    folder.mkdir(parents=True)
    store = module.FeatureStore(folder / "bench.h5")
    pre = Preprocess()
    meta = module.GroupMeta(backbone="synthetic", variant="v1", weights="random", weights_sha256="0" * 64,
                            preprocess=pre.to_dict(), preprocess_fingerprint=pre.fingerprint, dim=args.dim)
    ids = [f"images/{i // 1000:04d}/img_{i:08d}.jpg" for i in range(rows + args.batch)]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with store.writer() as w:
        w.ensure_group(meta, ids)
        for lo in range(0, rows, 16384):
            hi = min(lo + 16384, rows)
            w.write_rows(KEY, ids[lo:hi], rng.standard_normal((hi - lo, args.dim), dtype=np.float32))
    built = time.perf_counter() - start
    out = {"rows": rows, "build_seconds": round(built, 1), "store_bytes": folder_bytes(folder)}
    batch = rng.standard_normal((args.batch, args.dim), dtype=np.float32)
    aux = rng.standard_normal(args.aux_mb * MIB // 4, dtype=np.float32).reshape(-1, 2)
    with store.writer() as w:
        w.write_rows(KEY, ids[rows:], batch)  # logged: what the checkpoint folds in
        with Measure(folder) as m:
            w.checkpoint()
        out["checkpoint"] = m.result()
        with Measure(folder) as m:
            w.write_aux(KEY, "bench_aux", aux, {"n": len(aux)})
            w.checkpoint()
        out["aux_write"] = m.result()
    with Measure(folder) as m:
        with store.writer() as w:
            w.ensure_group(meta, ids)
            assert int(store.status(KEY)["done"].sum()) == rows + args.batch
    out["noop_run"] = m.result()
    np.testing.assert_array_equal(store.load(KEY, ids=ids[rows:]).X, batch)  # the rows really went in
    shutil.rmtree(folder)
    return out


def print_table(results: dict, args: argparse.Namespace) -> None:
    large, small = str(args.rows), str(args.small)
    print(f"{args.rows:,} rows x {args.dim} float32 ({args.rows * args.dim * 4 / 2**30:.2f} GiB) against "
          f"{args.small:,} rows; a checkpoint of {args.batch} rows ({args.batch * args.dim * 4 / MIB:.2f} MiB); "
          f"an aux array of {args.aux_mb} MiB")
    sizes = (f"{args.rows / 1e6:g}M" if args.rows >= 1e6 else f"{args.rows // 1000}k", f"{args.small // 1000}k")
    print(f"{'':30}" + "".join(f"{n.split()[0] + ' ' + c:>12}" for n in results for c in (*sizes, "ratio")))
    for op in ("checkpoint", "aux_write", "noop_run"):
        for what, unit, scale in (("seconds", "s", 1), ("peak_extra_bytes", "MiB", MIB), ("written_bytes", "MiB", MIB)):
            label = f"{op.replace('_', ' ')}: {what.replace('_bytes', '').replace('_', ' ')} ({unit})"
            cells = []
            for name in results:
                a, b = results[name][large][op][what] / scale, results[name][small][op][what] / scale
                cells += [f"{a:>12.3f}", f"{b:>12.3f}", f"{a / b:>12.1f}" if b else f"{'-':>12}"]
            print(f"{label:30}" + "".join(cells))
    for name in results:
        r = results[name][large]
        print(f"{name}: the {args.rows:,}-row store is {r['store_bytes'] / 2**30:.2f} GiB, built in "
              f"{r['build_seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--aux-mb", type=int, default=8)
    parser.add_argument("--old", default="main", help="git ref of the store to compare with, or 'none'")
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="featkit-bench-store-", dir=args.scratch))
    try:
        free = shutil.disk_usage(scratch).free
        need = 3 * args.rows * args.dim * 4
        if free < need:
            raise SystemExit(f"{scratch} has {free / 2**30:.1f} GiB free; the {args.rows:,}-row store needs "
                             f"about {need / 2**30:.1f} GiB")
        modules = {"new": new_store}
        if args.old != "none":
            modules[f"old ({args.old})"] = old_store(args.old, scratch)
        results = {}
        for name, module in modules.items():
            results[name] = {}
            for rows in (args.rows, args.small):
                print(f"{name}: {rows:,} rows ...", file=sys.stderr, flush=True)
                results[name][str(rows)] = measure_store(module, scratch / f"{name.split()[0]}-{rows}", rows, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps({"config": vars(args) | {"scratch": str(scratch)}, "results": results}, indent=2))
    else:
        print_table(results, args)


if __name__ == "__main__":
    main()
