"""The Ray Data engine (issue 6, item 2): same store, same ids, same features as local.

One module-scoped local Ray (2 CPUs, small object store, no dashboard) serves every
test here; the engine joins it instead of starting its own. Real porcelain photos
plus a few broken files, extracted at fp32 by both engines.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _manifest import write_manifest
from conftest import dataset_dir
from featkit.config import Config
from featkit.errors import FeatkitError
from featkit.api import Collection
from featkit.extract import ExtractSettings
from featkit.predict import PredictSettings
from featkit.store import FeatureStore

ray = pytest.importorskip("ray", reason="the Ray engine needs pip install 'featkit[ray]'")
pytestmark = pytest.mark.slow

FP32 = dict(progress=False, precision="fp32", batch_size=16)
BROKEN = ("images/zz_empty.jpg", "images/zz_half.jpg", "images/zz_notes.jpg")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def porcelain(tmp_path_factory) -> Config:
    """40 real porcelain photos (every 43rd row) and three broken files, with featkit.toml."""
    source = dataset_dir("cpac-porcelain")
    root = tmp_path_factory.mktemp("porcelain-ray")
    (root / "images").mkdir()
    with open(source / "labels.csv", newline="") as fh:
        picked = list(csv.DictReader(fh))[::43][:40]
    rows = []
    for row in picked:
        shutil.copy(source / row["image"], root / row["image"])
        rows.append({"image": row["image"], "dynasty": row["dynasty"]})
    data = (source / picked[0]["image"]).read_bytes()
    (root / BROKEN[0]).write_bytes(b"")
    (root / BROKEN[1]).write_bytes(data[: len(data) // 3])
    (root / BROKEN[2]).write_text("not an image")
    rows += [{"image": name, "dynasty": "ming"} for name in BROKEN]
    return write_manifest(root, rows, name="porcelain", task="dynasty")


def _extract(config: Config, store: Path, **settings):
    cfg = config.replace(store=store)
    return Collection(cfg).extract_summary("mobilenet_v2", settings=ExtractSettings(**FP32, **settings))


def test_ray_engine_writes_what_the_local_engine_writes(porcelain, ray_session, tmp_path):
    local = _extract(porcelain, tmp_path / "local.h5", workers=1)
    remote = _extract(porcelain, tmp_path / "ray.h5", engine="ray")
    assert remote.key == local.key
    assert (remote.computed, remote.failed, remote.remaining) == (local.computed, local.failed, 0) == (40, 3, 0)
    assert remote.device == "cpu" and remote.precision == "fp32"

    a, b = FeatureStore(tmp_path / "local.h5"), FeatureStore(tmp_path / "ray.h5")
    sa, sb = a.status(local.key), b.status(remote.key)
    assert list(sa["ids"]) == list(sb["ids"]) and (sa["done"] == sb["done"]).all()
    assert sa["failures"] == sb["failures"] and set(sb["failures"]) == set(BROKEN)
    assert "truncated" in sb["failures"]["images/zz_half.jpg"]
    fa, fb = a.load(local.key), b.load(remote.key)
    assert list(fa.ids) == list(fb.ids) and len(fa.ids) == 40
    np.testing.assert_allclose(fb.X, fa.X, rtol=1e-5, atol=1e-6)  # identical features, within fp32 rounding
    assert a.meta(local.key)["preprocess_fingerprint"] == b.meta(remote.key)["preprocess_fingerprint"]

    again = _extract(porcelain, tmp_path / "ray.h5", engine="ray")  # resumes like the local engine
    assert (again.computed, again.already_done, again.skipped_failed) == (0, 40, 3)

    # predict embeds in memory through the same runtime: its rows and failures are the stores' rows
    from featkit.modelio import feature_space
    from featkit.predict import embed_in_space

    paths = [porcelain.root / i for i in sa["ids"]]
    rows, errors = embed_in_space(feature_space(a.meta(local.key)), paths, config=porcelain,
                                  settings=PredictSettings(precision="fp32", batch_size=16, workers=1))
    assert {str(sa["ids"][i]) for i in errors} == set(BROKEN)
    done = [i for i in range(len(paths)) if i not in errors]
    predicted = np.stack([rows[i] for i in done])
    np.testing.assert_allclose(predicted, fa.X, rtol=1e-5, atol=1e-6)
    assert [str(sa["ids"][i]) for i in done] == list(fa.ids)


def test_cli_ray_engine_resumes_a_local_store_and_prints_clean_json(porcelain, ray_session, tmp_path):
    store = tmp_path / "mixed.h5"
    first = _extract(porcelain, store, limit=10, workers=0)
    result = CliRunner().invoke(_app(), ["extract", "--config", str(porcelain.root), "--store", str(store),
                                         "--engine", "ray", "--fp32", "--batch-size", "16", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (first.computed, summary["already_done"], summary["computed"], summary["failed"]) == (10, 10, 30, 3)
    assert len(FeatureStore(store).load(summary["key"]).ids) == 40


def test_ray_engine_names_what_is_wrong(porcelain, ray_session, tmp_path):
    with pytest.raises(FeatkitError, match="no GPUs"):
        _extract(porcelain, tmp_path / "x.h5", engine="ray", device="cuda")
    with pytest.raises(FeatkitError, match="engine 'spark'; valid choices: local, ray"):
        _extract(porcelain, tmp_path / "x.h5", engine="spark")
    with pytest.raises(FeatkitError, match="add --engine ray"):
        _extract(porcelain, tmp_path / "x.h5", address="ray://head:10001")


def _app():
    from featkit_cli.main import app

    return app
