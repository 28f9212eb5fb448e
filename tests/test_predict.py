"""Saved models: safe loading, refusing what does not fit, predicting new images like the store's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featkit import modelio
from featkit.errors import FeatkitError
from featkit.heads.run import FitSettings, fit_task
from featkit.modelio import load_model
from featkit.predict import PredictSettings, predict_images
from featkit_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def glaze_model(demo_store, tmp_path_factory):
    """A logreg glaze model fitted on the demo store (saved in its run folder)."""
    config, key = demo_store
    out = tmp_path_factory.mktemp("models") / "glaze"
    result = fit_task(config, task="glaze", clf="logreg", settings=FitSettings(cv=3, params={"C": (0.1,)}, out=out,
                                                                                plot=False))
    assert result.model_dir == out
    return config, out


def _copy(model: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(model, dst)
    return dst


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "model.json").read_text())
    for key, value in changes.items():
        if key in meta["feature_space"]:
            meta["feature_space"][key] = value
        else:
            meta[key] = value
    (folder / "model.json").write_text(json.dumps(meta))


def test_saved_model_round_trips_and_predicts_what_it_was_fitted_on(glaze_model):
    config, folder = glaze_model
    model = load_model(folder)
    meta = json.loads((folder / "model.json").read_text())
    assert model.task == "glaze" and model.classes == meta["classes"]
    assert meta["feature_space"]["backbone"] == "mobilenet_v2" and meta["featkit_version"]
    labels = pd.read_csv(config.root / "labels.csv")
    result = predict_images([folder], [config.root / "labels.csv"], config=config)
    assert result.sources == {"store": 80, "embedded": 0, "failed": 0}
    predicted = [row["glaze"]["label"] for row in result.rows]
    assert np.mean(np.array(predicted) == labels["glaze"].to_numpy()) > 0.95  # it was trained on these


def test_new_images_are_embedded_like_the_store_did(glaze_model, tmp_path):
    config, folder = glaze_model
    labels = pd.read_csv(config.root / "labels.csv")
    new = tmp_path / "new_photos"
    new.mkdir()
    for name in labels["image"][:6]:
        shutil.copy(config.root / name, new / Path(name).name)
    (new / "broken.jpg").write_bytes(b"not a jpeg")
    from_store = predict_images([folder], [config.root / n for n in labels["image"][:6]], config=config)
    embedded = predict_images([folder], [new], config=None)
    assert embedded.sources == {"store": 0, "embedded": 6, "failed": 1}
    rows = {Path(r["image"]).name: r for r in embedded.rows}
    assert "not an image" in rows["broken.jpg"]["error"] and "glaze" not in rows["broken.jpg"]
    for row in from_store.rows:
        twin = rows[Path(row["image"]).name]
        assert twin["glaze"]["label"] == row["glaze"]["label"]
        for c, p in row["glaze"]["probabilities"].items():
            assert abs(twin["glaze"]["probabilities"][c] - p) < 0.05


def test_predict_cli_writes_labels_and_probabilities(glaze_model, tmp_path, monkeypatch):
    config, folder = glaze_model
    monkeypatch.chdir(tmp_path)  # no featkit.toml here: everything is embedded
    image = config.root / pd.read_csv(config.root / "labels.csv")["image"][0]
    out = runner.invoke(app, ["predict", "--model", str(folder), str(image), "-o", "pred.csv", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    (row,) = data["predictions"]
    assert set(row["glaze"]["probabilities"]) == set(data["models"][0]["classes"])
    assert abs(sum(row["glaze"]["probabilities"].values()) - 1) < 1e-3
    csv = pd.read_csv(tmp_path / "pred.csv")
    assert list(csv.columns[:3]) == ["image", "glaze", "glaze_probability"] and csv["glaze"][0] == row["glaze"]["label"]


def test_a_model_from_another_feature_space_is_refused(glaze_model, tmp_path):
    config, folder = glaze_model
    model = _copy(folder, tmp_path)
    _edit_meta(model, weights_sha256="0" * 64)
    image = config.root / pd.read_csv(config.root / "labels.csv")["image"][0]
    with pytest.raises(FeatkitError, match="does not match the store's mobilenet_v2/imagenet1k_v1 .*weights_sha256"):
        predict_images([model], [image], config=config)  # the store's rows are not comparable
    with pytest.raises(FeatkitError, match="the backbone available here differs .*weights_sha256"):
        predict_images([model], [image], config=None)  # nor are freshly embedded ones
    model2 = _copy(folder, tmp_path / "b")
    _edit_meta(model2, preprocess_fingerprint="ffffffffffffffff")
    with pytest.raises(FeatkitError, match="preprocess_fingerprint"):
        predict_images([model2], [image], config=None)


@pytest.mark.parametrize("damage, message", [
    (lambda m: (m / "model.skops").unlink(), "is incomplete: model.skops missing"),
    (lambda m: (m / "model.json").unlink(), "is incomplete: model.json missing"),
    (lambda m: _edit_meta(m, featkit_version="0.0.1"), "was written by featkit 0.0.1; this is featkit"),
    (lambda m: (m / "model.json").write_text("{not json"), "is not valid JSON"),
    (lambda m: (m / "model.skops").write_bytes((m / "model.skops").read_bytes()[:-100]), "does not match the sha256"),
])
def test_damaged_or_foreign_model_folders_are_refused(glaze_model, tmp_path, damage, message):
    model = _copy(glaze_model[1], tmp_path)
    damage(model)
    with pytest.raises(FeatkitError, match=message):
        load_model(model)
    out = runner.invoke(app, ["predict", "--model", str(model), str(tmp_path)])
    assert out.exit_code == 2 and "Traceback" not in out.output


def test_a_model_file_that_could_run_code_is_never_loaded(glaze_model, tmp_path):
    import skops.io as sio
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    model = _copy(glaze_model[1], tmp_path)
    evil = make_pipeline(FunctionTransformer(os.system))  # loading must not even build this
    sio.dump(evil, model / "model.skops")
    _edit_meta(model, model_sha256=modelio._sha256(model / "model.skops"))  # a consistent but hostile folder
    with pytest.raises(FeatkitError, match=r"holds types featkit does not trust: .*system.*refusing to load"):
        load_model(model)


def test_models_and_inputs_are_checked(glaze_model, tmp_path):
    config, folder = glaze_model
    with pytest.raises(FeatkitError, match="does not exist"):
        predict_images([folder], [tmp_path / "missing.jpg"])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FeatkitError, match="neither an image"):
        predict_images([folder], [tmp_path / "notes.txt"])
    with pytest.raises(FeatkitError, match="model folder .* does not exist"):
        predict_images([tmp_path / "nope"], [tmp_path])
    twin = _copy(folder, tmp_path / "twin")
    with pytest.raises(FeatkitError, match="one model per task"):
        predict_images([folder, twin], [config.root / "labels.csv"], settings=PredictSettings())


@pytest.mark.parametrize("clf, rebalance", [("linsvc", "class_weight"), ("lgbm", "smote"), ("logreg", "oversample")])
def test_every_head_survives_save_and_load(clf, rebalance, tmp_path):
    from featkit.heads import create_head
    from featkit.modelio import save_model

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    y = np.where(X[:, 0] > 0.5, "rare", "common").astype(object)
    pipe = create_head(clf, n_classes=2, rebalance=rebalance, params={"n_estimators": 20} if clf == "lgbm" else None,
                       class_counts={"common": int((y == "common").sum()), "rare": int((y == "rare").sum())}).fit(X, y)
    save_model(tmp_path, pipe, meta={"task": "t", "clf": clf, "classes": ["common", "rare"],
                                     "feature_space": {"backbone": "b", "variant": "v"}})
    np.testing.assert_array_equal(load_model(tmp_path).pipeline.predict_proba(X), pipe.predict_proba(X))
