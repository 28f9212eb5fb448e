"""A small collection for the workbench tests, with what the review queues must find planted in it.

The rendered vessels (two views per object), with:

* ``images/`` a symlink to a folder elsewhere (as when the photos live on another disk);
* three glaze labels flipped to another common glaze (label issues to find, with the
  true glaze as the suggestion);
* one photo copied byte for byte under a new object id (a near-duplicate that leaks
  across groups);
* a file in the images folder that is not in the manifest (must never be served).

It is extracted with the real MobileNetV2 and fitted (glaze, logreg) through the CLI,
so the runs/ folder and the store look exactly as a user's would.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from featkit.config import Config
from featkit.demo import make_demo_collection
from featkit_cli.main import app

FLIPS = {"blue_white": "copper_red", "copper_red": "blue_white", "celadon": "copper_red"}  # glazes far apart
DUPLICATE = "images/obj-9999_v0.jpg"
STRAY = "images/not-in-the-manifest.jpg"


def _invoke(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def build_collection(base: Path, *, n_objects: int = 60) -> tuple[Config, dict]:
    """The collection in ``base/collection`` (images in ``base/disk``); returns its config and the planted facts."""
    disk, root = base / "disk", base / "collection"
    manifest = make_demo_collection(disk, n_objects=n_objects)
    root.mkdir(parents=True)
    (root / "images").symlink_to(disk / "images", target_is_directory=True)
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    flipped = {}
    original = frame.copy()
    for glaze, wrong in FLIPS.items():  # the first view of the second object of each glaze
        row = original.index[(original["glaze"] == glaze) & original["image"].str.endswith("_v0.jpg")][1]
        flipped[frame.at[row, "image"]] = (wrong, glaze)
        frame.at[row, "glaze"] = wrong
    source = frame.iloc[0]
    shutil.copyfile(disk / source["image"], disk / DUPLICATE)
    duplicate = {**source.to_dict(), "image": DUPLICATE, "object_id": "obj-9999"}
    frame = pd.concat([frame, pd.DataFrame([duplicate])], ignore_index=True)
    frame.to_csv(root / "labels.csv", index=False)
    shutil.copyfile(disk / source["image"], disk / STRAY)
    config = Config(root=root.resolve(), name="vessels", manifest=Path("labels.csv"), image_column="image",
                    tasks=("form", "glaze", "decoration", "period"), group="object_id")
    config.write()
    _invoke("extract", "--backbone", "mobilenet_v2", "--workers", "1", "--config", str(root))
    _invoke("fit", "--task", "glaze", "--clf", "logreg", "--cv", "3", "--param", "C=0.1", "--config", str(root))
    return config, {"flipped": flipped, "duplicate": (source["image"], DUPLICATE), "stray": STRAY,
                    "manifest": frame}


_BUILT: dict[str, tuple[Path, dict]] = {}


def collection_copy(tmp_path_factory) -> tuple[Config, dict]:
    """A private copy of the collection (built once per test session): each test module writes its own corrections."""
    if "built" not in _BUILT:
        config, facts = build_collection(tmp_path_factory.mktemp("workbench"))
        _BUILT["built"] = (config.root, facts)
    root, facts = _BUILT["built"]
    copy = tmp_path_factory.mktemp("workbench-copy") / "collection"
    shutil.copytree(root, copy, symlinks=True)
    return Config.read(copy / "featkit.toml"), facts


def start_server(root: Path, *args: str, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``featkit serve`` on a free port as a user starts it; returns the process and the URL it printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "featkit_cli.main", "serve", "--config", str(root), "--port", "0",
                             "--no-open", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen: list[str] = []
    url: queue.Queue = queue.Queue()

    def read() -> None:  # keeps draining the output, so the server never blocks on a full pipe
        for line in proc.stdout:
            seen.append(line)
            found = re.search(r"serving (http://\S+)", line)
            if found:
                url.put(found.group(1))
        url.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        found = url.get(timeout=timeout)
    except queue.Empty:
        found = None
    if found is None:
        proc.kill()
        raise AssertionError("featkit serve did not print its URL:\n" + "".join(seen))
    proc.output = seen
    return proc, found


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def synthetic_collection(root: Path, *, n: int, classes: int, dim: int = 16, seed: int = 0) -> Config:
    """``n`` rows in ``classes`` classes with random features and UMAP coordinates already cached in the store.

    No image files and no backbone: what the page's load time depends on (the rows, the
    cached map, the legend) without minutes of extraction and UMAP fitting.
    """
    import numpy as np

    from featkit.explore.umap import UmapSettings, cache_name
    from featkit.store import FeatureStore, GroupMeta

    rng = np.random.default_rng(seed)
    label = rng.zipf(1.6, n) % classes  # imbalanced, as real collections are
    ids = [f"images/{i:06d}.jpg" for i in range(n)]
    root.mkdir(parents=True)
    pd.DataFrame({"image": ids, "label": [f"class-{c:03d}" for c in label],
                  "object": [f"obj-{i // 3}" for i in range(n)]}).to_csv(root / "labels.csv", index=False)
    config = Config(root=root, name="synthetic", manifest=Path("labels.csv"), tasks=("label",), group="object")
    config.write()
    centres = rng.normal(scale=10, size=(classes, 2))
    coords = (centres[label] + rng.normal(size=(n, 2))).astype(np.float32)
    X = np.hstack([coords, rng.normal(size=(n, dim - 2))]).astype(np.float32)
    meta = GroupMeta(backbone="synthetic", variant="v1", weights="none", weights_sha256="0" * 64, preprocess={},
                     preprocess_fingerprint="none", dim=dim)
    with FeatureStore(config.store_path).writer() as writer:
        writer.ensure_group(meta, ids)
        writer.write_rows("synthetic/v1", ids, X)
        writer.write_aux("synthetic/v1", cache_name(UmapSettings().params(), ids), coords)
    return config
