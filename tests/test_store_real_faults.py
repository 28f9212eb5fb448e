"""Damaged copies of a real store (issue 11, items 2 and 3), through the CLI as a user meets them.

150 porcelain photographs embedded by MobileNetV2 (as in test_crash.py). Flipped feature
bytes: `fit` stops with a one-line error naming the images instead of fitting on wrong
numbers, and `featkit verify` finds them. A truncated store file: `info` and `extract` say
which file and to run `featkit verify`, leaving no log or temporary file; `featkit verify`
sets it aside, and `featkit extract` recomputes exactly what was lost, to the same features.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import dataset_dir
from featkit.store import FeatureStore
from featkit_cli.main import app
from test_crash import KEY, N_IMAGES, TOL, _collection
from test_store_faults import _flip

EXTRACT = ["extract", "--fp32", "--workers", "0", "--json"]


def _run(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def _one_line_error(result, *parts: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for part in parts:
        assert part in " ".join(result.output.split()), (part, result.output)


@pytest.mark.slow
def test_damaged_real_store(tmp_path, monkeypatch):
    config = _collection(tmp_path / "porcelain", dataset_dir("cpac-porcelain"))
    monkeypatch.chdir(config.root)
    assert json.loads(_run(*EXTRACT).output)["computed"] == N_IMAGES
    store = FeatureStore(config.store_path)
    store.compact()
    reference = store.load(KEY)
    pristine = store.path.read_bytes()

    # 64 flipped bytes in the features: an error naming the images, never a fit on wrong numbers
    _flip(store.path, f"{KEY}/features", 0)
    _one_line_error(_run("fit", "--task", "dynasty", "--clf", "logreg"), str(store.path), "is damaged",
                    "features rows 0-149 of mobilenet_v2/imagenet1k_v1", "150 image(s) affected", "featkit verify")
    check = _run("verify", "--check-only", "--json")
    assert check.exit_code == 1
    report = json.loads(check.output)
    assert sorted(report["recompute"][KEY]) == sorted(reference.ids) and not report["repaired"]

    # a truncated store file: clear errors, nothing left behind; verify sets it aside, extract redoes it
    store.path.write_bytes(pristine[: len(pristine) * 3 // 5])
    _one_line_error(_run("info"), str(store.path), "is damaged", "featkit verify")
    _one_line_error(_run(*EXTRACT), str(store.path), "is damaged", "featkit verify")
    assert not store.wal_path.exists() and not list(store.path.parent.rglob("*.tmp"))
    repaired = _run("verify")
    assert repaired.exit_code == 1 and "set aside" in repaired.output
    again = json.loads(_run(*EXTRACT).output)
    assert again["computed"] == N_IMAGES and again["failed"] == 0
    resumed = store.load(KEY)
    assert list(resumed.ids) == list(reference.ids)
    np.testing.assert_allclose(resumed.X, reference.X, **TOL)
    assert _run("verify", "--check-only").exit_code == 0
