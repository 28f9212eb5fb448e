"""A manifest CSV and its featkit.toml for a test collection (tests of issue 6)."""

from __future__ import annotations

import csv
from pathlib import Path

from featkit.config import Config


def write_manifest(root: Path, rows: list[dict], *, name: str, task: str) -> Config:
    """``root/labels.csv`` from ``rows`` (an ``image`` column and ``task``), with featkit.toml."""
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", task])
        writer.writeheader()
        writer.writerows(rows)
    config = Config(root=root, name=name, manifest=Path("labels.csv"), tasks=(task,))
    config.write()
    return config
