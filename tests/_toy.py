"""A generated collection with a store written directly (no network loaded): for tests of names and disks.

36 tiny PNGs, one manifest column per task, and 8-d features that separate the rows by
``i % 3``, so every head fits quickly and well on every task.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from featkit.config import Config
from featkit.store import FeatureStore
from test_store import KEY, _meta

N = 36


def toy_collection(root: Path, tasks: list[str], label: Callable[[int, int], str], **config) -> Config:
    """``root`` with images/, labels.csv (``label(task_index, row)`` in each cell), featkit.toml and a store."""
    (root / "images").mkdir(parents=True)
    ids = [f"images/{i:02d}.png" for i in range(N)]
    rows = []
    for i, image_id in enumerate(ids):
        Image.new("RGB", (8, 8), (7 * i, 0, 0)).save(root / image_id)
        rows.append([image_id, *(label(t, i) for t in range(len(tasks)))])
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["image", *tasks], *rows])
    cfg = Config(root=root, name="toy", manifest=Path("labels.csv"), tasks=tuple(tasks), **config)
    cfg.write()
    rng = np.random.default_rng(0)
    X = np.array([np.eye(8)[i % 3] * 3 + rng.normal(0, 0.3, 8) for i in range(N)], np.float32)
    with FeatureStore(cfg.store_path).writer() as w:
        w.ensure_group(_meta(dim=8), ids)
        w.write_rows(KEY, ids, X)
    return cfg
