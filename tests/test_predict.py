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

import featkit as fk
from featkit import modelio
from featkit.api import Collection
from featkit.config import Config
from featkit.errors import FeatkitError
from featkit.modelio import load_model
from featkit.predict import PredictSettings, predict_images
from featkit_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def glaze_model(demo_emb, tmp_path_factory):
    """A logreg glaze model fitted on the demo store (saved in its run folder)."""
    out = tmp_path_factory.mktemp("models") / "glaze"
    result = demo_emb.fit("glaze", "logreg", cv=3, params={"C": (0.1,)}, plot=False)
    assert result.save(out) == out and result.run_dir == out
    return demo_emb.manifest.config, out


def _predict(models, inputs, config: Config | None = None, **settings):
    col = Collection(config) if config is not None else None
    return predict_images(models, inputs, manifest=col.manifest if col else None, store=col.store if col else None,
                          settings=PredictSettings(**settings))


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
    result = _predict([folder], [config.root / "labels.csv"], config)
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
    from_store = _predict([folder], [config.root / n for n in labels["image"][:6]], config)
    embedded = _predict([folder], [new])
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
    assert list(csv.columns[:6]) == ["image", "source", "error", "glaze", "glaze:confidence", "glaze:needs_review"]
    assert csv["glaze"][0] == row["glaze"]["label"] and csv["glaze:confidence"][0] == row["glaze"]["confidence"]
    # the probability columns fit's predictions.csv has, by the same names
    fitted = [c for c in pd.read_csv(folder / "predictions.csv").columns if ":p:" in c]
    assert fitted == [f"glaze:p:{c}" for c in data["models"][0]["classes"]] == [c for c in csv.columns if ":p:" in c]
    review = data["review"]["glaze"]
    assert review["threshold"] == json.loads((folder / "report.json").read_text())["review"]["threshold"]
    assert row["glaze"]["needs_review"] == (row["glaze"]["confidence"] < review["threshold"])


def test_predictions_below_the_review_threshold_are_marked_and_counted(glaze_model, tmp_path):
    from featkit.heads.calibration import review_threshold

    config, folder = glaze_model
    report = json.loads((folder / "report.json").read_text())
    oof = pd.read_csv(folder / "predictions.csv")
    assert report["review"]["min_precision"] == 0.95 and "threshold" in report["review"]
    # the threshold is where the out-of-fold predictions kept reach the precision asked
    found = review_threshold(oof["confidence"].to_numpy(), (oof["label"] == oof["predicted"]).to_numpy(), 0.8)
    kept = oof[oof["confidence"] >= found["threshold"]]
    assert (kept["label"] == kept["predicted"]).mean() >= 0.8 and len(kept) == found["kept"]
    lower = oof[oof["confidence"] >= oof["confidence"][oof["confidence"] < found["threshold"]].max()]
    assert (lower["label"] == lower["predicted"]).mean() < 0.8  # one step lower would not reach it

    col = fk.open(config.root)
    images = [col.root / i for i in col.ids[:40]]
    frame = col.predict(images, model=folder, min_precision=0.8)
    assert frame["glaze:needs_review"].tolist() == (frame["glaze:confidence"] < found["threshold"]).tolist()
    everything = col.predict(images, model=folder, review_below=1.0)
    assert everything["glaze:needs_review"].all()
    out = runner.invoke(app, ["predict", "--model", str(folder), *map(str, images[:10]), "--review-below", "0",
                              "--config", str(config.root)])
    assert out.exit_code == 0, out.output
    assert "glaze: 0 of 10 predictions sent to review (confidence below 0.000; --review-below 0)" in out.output
    both = runner.invoke(app, ["predict", "--model", str(folder), str(images[0]), "--review-below", "0.5",
                               "--min-precision", "0.9", "--config", str(config.root)])
    assert both.exit_code == 2 and "not both" in both.output
    old = tmp_path / "old-model"  # saved by a featkit before review thresholds: said, never guessed
    shutil.copytree(folder, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["review"], meta["out_of_fold"]
    (old / "model.json").write_text(json.dumps(meta))
    assert col.predict(images[:3], model=old)["glaze:needs_review"].all()
    with pytest.raises(FeatkitError, match="older featkit.*--review-below"):
        col.predict(images[:3], model=old, min_precision=0.9)


def test_a_model_from_another_feature_space_is_refused(glaze_model, tmp_path):
    config, folder = glaze_model
    model = _copy(folder, tmp_path)
    _edit_meta(model, weights_sha256="0" * 64)
    image = config.root / pd.read_csv(config.root / "labels.csv")["image"][0]
    with pytest.raises(FeatkitError, match="does not match the store's mobilenet_v2/imagenet1k_v1 .*weights_sha256"):
        _predict([model], [image], config)  # the store's rows are not comparable
    with pytest.raises(FeatkitError, match="the backbone available here differs .*weights_sha256"):
        _predict([model], [image])  # nor are freshly embedded ones
    model2 = _copy(folder, tmp_path / "b")
    _edit_meta(model2, preprocess_fingerprint="ffffffffffffffff")
    with pytest.raises(FeatkitError, match="preprocess_fingerprint"):
        _predict([model2], [image])


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
        _predict([folder], [tmp_path / "missing.jpg"])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FeatkitError, match="neither an image"):
        _predict([folder], [tmp_path / "notes.txt"])
    with pytest.raises(FeatkitError, match="model folder .* does not exist"):
        _predict([tmp_path / "nope"], [tmp_path])
    twin = _copy(folder, tmp_path / "twin")
    with pytest.raises(FeatkitError, match="one model per task"):
        _predict([folder, twin], [config.root / "labels.csv"])


@pytest.mark.parametrize("clf, rebalance, calibration", [
    ("linsvc", "class_weight", "sigmoid"), ("lgbm", "smote", "isotonic"), ("logreg", "oversample", "temperature"),
    ("logreg", "none", "none"), ("linsvc", "undersample", "auto")])
def test_every_head_and_calibration_survives_save_and_load(clf, rebalance, calibration, tmp_path):
    from featkit.evaluate import EvalSettings, build_head, calibrate, tune
    from featkit.modelio import save_model

    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 8)).astype(np.float32)
    y = np.where(X[:, 0] + rng.normal(size=160) > 1, "rare", "common").astype(object)
    settings = EvalSettings(rebalance=rebalance, calibration=calibration,
                            params={"n_estimators": (20,)} if clf == "lgbm" else {})
    pipe, _ = build_head(clf, y, n_features=8, settings=settings)
    tuned = tune(clf, pipe, X=X, y=y, groups=None, settings=settings)
    model, how, _ = calibrate(clf, tuned, X=X, y=y, groups=None, settings=settings)
    assert how["method"] == calibration or calibration == "auto"
    save_model(tmp_path, model, meta={"task": "t", "clf": clf, "classes": ["common", "rare"],
                                      "feature_space": {"backbone": "b", "variant": "v"}})
    np.testing.assert_array_equal(load_model(tmp_path).pipeline.predict_proba(X), model.predict_proba(X))


# -- one extraction runtime: predict embeds new images exactly as extract stored them ---------------
@pytest.fixture(scope="module")
def fp32_collection(tmp_path_factory):
    """A demo collection (12 objects x 2 views) whose images/ folder is a symlink to another folder,
    extracted in fp32, plain and with hflip TTA."""
    from featkit.demo import make_demo_collection

    elsewhere = tmp_path_factory.mktemp("other-disk")
    make_demo_collection(elsewhere, n_objects=12, size=128)
    root = tmp_path_factory.mktemp("linked")
    (root / "images").symlink_to(elsewhere / "images", target_is_directory=True)
    shutil.copy(elsewhere / "labels.csv", root / "labels.csv")
    Config(root=root, name="linked", manifest=Path("labels.csv"), tasks=("glaze",), group="object_id").write()
    col = fk.open(root)
    settings = {"precision": "fp32", "workers": 0, "batch_size": 5, "progress": False}
    plain = col.extract("mobilenet_v2", **settings)
    flipped = col.extract("mobilenet_v2", tta="hflip", **settings)
    return col, plain, flipped


@pytest.mark.parametrize("variant", ["plain", "hflip"])
def test_a_copy_outside_the_collection_predicts_like_its_stored_row(fp32_collection, tmp_path, variant):
    col, plain, flipped = fp32_collection
    emb = plain if variant == "plain" else flipped
    assert emb.key == ("mobilenet_v2/imagenet1k_v1" if variant == "plain" else "mobilenet_v2/imagenet1k_v1+tta-hflip")
    model = emb.fit("glaze", "logreg", cv=2, params={"C": (0.1,)}, plot=False)
    images = [col.manifest.path(i) for i in col.ids[:7]]
    stored = col.predict(images, model=model, precision="fp32")
    copies = tmp_path / "copies"
    copies.mkdir()
    for path in images:
        shutil.copy(path, copies / path.name)
    new = col.predict(sorted(copies.iterdir()), model=model, precision="fp32", batch_size=3)
    assert set(stored["source"]) == {"store"} and set(new["source"]) == {"embedded"}
    by_name = {Path(p).name: i for i, p in enumerate(new["image"])}
    columns = [c for c in stored.columns if c.startswith("glaze:")]
    for i, path in enumerate(stored["image"]):
        j = by_name[Path(path).name]
        assert new["glaze"][j] == stored["glaze"][i]
        # fp32 rows differ only by float rounding between batch shapes (oneDNN picks kernels by shape)
        np.testing.assert_allclose(new.loc[j, columns].to_numpy(float), stored.loc[i, columns].to_numpy(float),
                                   atol=2e-4)


def test_collection_images_through_a_symlinked_folder_come_from_the_store(fp32_collection, monkeypatch):
    col, plain, _ = fp32_collection
    model = plain.fit("glaze", "logreg", cv=2, params={"C": (0.1,)}, plot=False)
    first = col.ids[0]
    through_link = col.root / first  # root/images/... where images/ is a symlink
    real = through_link.resolve()
    assert real != through_link and not real.is_relative_to(col.root)
    monkeypatch.chdir(col.root)
    result = col.predict([Path(first), real], model=model, precision="fp32")  # relative, and the link's target
    assert list(result["source"]) == ["store", "store"]  # the same image however it is named
    assert result["glaze"].nunique() == 1
    assert list(col.predict([through_link], model=model)["source"]) == ["store"]
