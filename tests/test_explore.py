"""Exploration end to end on the demo vessels, embedded with real MobileNetV2 weights.

The fixture copies the demo store into a collection of its own (the images are
linked, not copied) and changes it in ways the tools must notice: four objects get
the wrong form (label noise), one photo is copied under another object id into the
other half of the split with another glaze (a leak, labelled two ways), a task has a single class, and a second feature
set from randomly initialised weights is extracted to compare against.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from featkit.config import Config
from featkit.data import load_manifest
from featkit.errors import FeatkitError
from featkit.embeddings import resolve_key, resolve_keys
from featkit.explore.duplicates import DuplicateSettings, find_duplicates
from featkit.explore.label_issues import LabelIssueSettings, find_label_issues
from featkit.explore.outliers import OutlierSettings, find_outliers
from featkit.explore.rank import rank_backbones
from featkit.explore.separability import separability
from featkit.explore.umap import UmapSettings, draw_umap, umap_coordinates
from featkit.extract import ExtractSettings
from featkit.api import Collection
from featkit.store import FeatureStore

REAL = "mobilenet_v2/imagenet1k_v1"
RANDOM = "mobilenet_v2/random"
FLIPS = {"vase": "plate", "bowl": "jar"}  # two objects of each get the wrong form


@pytest.fixture(scope="module")
def env(demo_store, tmp_path_factory):
    demo, key = demo_store
    assert key == REAL
    root = tmp_path_factory.mktemp("explore")
    (root / "images").symlink_to(demo.root / "images", target_is_directory=True)
    frame = pd.read_csv(demo.manifest_path, dtype=str, keep_default_na=False)
    objects = sorted(frame["object_id"].unique())
    frame["split"] = ["val" if objects.index(o) % 4 == 3 else "train" for o in frame["object_id"]]
    frame["museum"] = "British Museum"  # a task with one class
    true_form = dict(zip(frame["image"], frame["form"]))
    flipped = []
    for old, new in FLIPS.items():
        chosen = sorted(frame.loc[frame["form"] == old, "object_id"].unique())[:2]
        rows = frame["object_id"].isin(chosen)
        frame.loc[rows, "form"] = new
        flipped += frame.loc[rows, "image"].tolist()
    original = frame[(frame["split"] == "train") & ~frame["image"].isin(flipped)].iloc[0]
    (root / "dup").mkdir()
    shutil.copyfile(demo.root / original["image"], root / "dup" / "copy.jpg")
    other_glaze = next(g for g in sorted(frame["glaze"].unique()) if g != original["glaze"])
    copy = {**original.to_dict(), "image": "dup/copy.jpg", "object_id": "obj-9999", "split": "val",
            "glaze": other_glaze}  # and labelled differently
    frame = pd.concat([frame, pd.DataFrame([copy])], ignore_index=True)
    frame.to_csv(root / "labels.csv", index=False)
    (root / "features").mkdir()
    shutil.copyfile(demo.store_path, root / "features" / "vessels.h5")
    config = Config(root=root, name="vessels", manifest=Path("labels.csv"), image_column="image",
                    tasks=("form", "glaze", "decoration", "period", "museum"), group="object_id", split="split")
    config.write()
    collection = load_manifest(config)
    settings = ExtractSettings(progress=False, workers=0)
    assert Collection(config).extract_summary("mobilenet_v2", settings=settings).computed == 1  # the copy
    Collection(config).extract_summary("mobilenet_v2", weights="random", settings=settings)
    col = Collection(config)
    return SimpleNamespace(config=config, collection=collection, flipped=flipped, true_form=true_form,
                           duplicate=(original["image"], "dup/copy.jpg"), col=col,
                           emb={key: col.embeddings(key=key) for key in (REAL, RANDOM)})


# -- UMAP ---------------------------------------------------------------------------------
def test_umap_is_cached_in_the_store_and_drawn_per_task(env, monkeypatch):
    settings = UmapSettings(n_neighbors=10, max_thumbnails=20)
    report = draw_umap(env.emb[REAL], tasks=("form", "glaze"), settings=settings)
    r = report.result
    assert r.coords.shape == (81, 2) and np.isfinite(r.coords).all() and not r.cached
    assert set(r.ids) == set(env.collection.ids)
    assert r.aux_name in next(g for g in FeatureStore(env.config.store_path).info()["groups"]
                              if g["key"] == REAL)["aux"]
    for task in ("form", "glaze"):
        with Image.open(report.pngs[task]) as img:
            assert img.format == "PNG"
    html = report.html.read_text()
    assert report.thumbnails == 20 and html.count("data:image/jpeg;base64,") == 20
    assert "https://" not in html and "http://" not in html

    import featkit.explore.umap as umap_module

    def no_fit(*args, **kwargs):
        raise AssertionError("a cached UMAP must not be fitted again")

    monkeypatch.setattr(umap_module, "compute_umap", no_fit)
    again = umap_coordinates(env.emb[REAL], settings=UmapSettings(n_neighbors=10, png=False))
    assert again.cached and again.aux_name == r.aux_name
    np.testing.assert_array_equal(again.coords, r.coords)
    np.testing.assert_array_equal(again.ids, r.ids)
    with pytest.raises(AssertionError, match="must not be fitted"):  # other parameters: another cache entry
        umap_coordinates(env.emb[REAL], settings=UmapSettings(n_neighbors=11))


def test_umap_neighbourhoods_follow_the_form(env):
    """The 2-D map keeps what the embedding separates: an image's nearest point mostly shares its form."""
    result = umap_coordinates(env.emb[REAL], settings=UmapSettings(n_neighbors=10))
    forms = np.array([env.true_form.get(i, env.true_form.get("images/" + Path(i).name)) for i in result.ids])
    known = np.array([f is not None for f in forms])
    d = np.linalg.norm(result.coords[:, None] - result.coords[None], axis=2)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    assert (forms[known] == forms[nearest][known]).mean() > 0.8


def test_umap_bad_input(env):
    with pytest.raises(FeatkitError, match="needs more than 100 embedded images, but there are only 81"):
        umap_coordinates(env.emb[REAL], settings=UmapSettings(n_neighbors=100))
    with pytest.raises(FeatkitError, match=r"no features for resnet50/\*; it holds: mobilenet_v2/imagenet1k_v1, "
                                           r"mobilenet_v2/random"):
        resolve_key(env.col.store, backbone="resnet50")
    with pytest.raises(FeatkitError, match="several feature sets"):
        resolve_key(env.col.store)
    assert resolve_keys(env.col.store) == [REAL, RANDOM]
    with pytest.raises(FeatkitError, match="unknown task 'shape'; valid choices: form, glaze"):
        draw_umap(env.emb[REAL], tasks="shape")


# -- separability -------------------------------------------------------------------------
def test_separability_compares_backbones_side_by_side(env):
    report = separability([env.emb[REAL], env.emb[RANDOM]])
    assert {(r["key"], r["task"]) for r in report.rows} == {(k, t) for k in (REAL, RANDOM)
                                                          for t in ("form", "glaze", "decoration", "period")}
    assert [s["task"] for s in report.skipped] == ["museum", "museum"]
    assert "only class 'British Museum'" in report.skipped[0]["reason"]
    table = report.table()
    assert table["form"][REAL] > 0.75 and table["form"][REAL] > table["form"][RANDOM] + 0.2  # 8 of 81 forms are wrong
    assert report.table("silhouette")["form"][REAL] > report.table("silhouette")["form"][RANDOM]
    assert all(r["group_aware"] for r in report.rows)
    per_class = [r for r in report.per_class if r["key"] == REAL and r["task"] == "form"]
    assert sorted(r["class"] for r in per_class) == ["bowl", "jar", "plate", "vase"]
    assert sum(r["n"] for r in per_class) == 81
    with pytest.raises(FeatkitError, match="task 'museum' has only class 'British Museum'"):
        separability([env.emb[REAL]], tasks="museum")


# -- outliers -----------------------------------------------------------------------------
def test_mislabelled_objects_are_the_outliers_of_their_new_class(env, tmp_path):
    report = find_outliers(env.emb[REAL], "form", settings=OutlierSettings(top=12), out=tmp_path)
    scores = report.scores
    for new in FLIPS.values():  # the demo's plates include a few genuinely odd ones, so ranks not all first
        in_class = scores[scores["class"] == new]
        wrong = in_class["id"].isin(env.flipped).to_numpy()
        assert wrong.sum() == 4 and in_class.loc[wrong, "rank_in_class"].max() <= 8
        assert roc_auc_score(wrong, in_class["relative_score"]) > 0.8
    top = pd.read_csv(report.csv)
    assert len(top) == 12 and list(top["relative_score"]) == sorted(top["relative_score"], reverse=True)
    assert {"id", "path", "class", "score", "relative_score", "rank_in_class", "group"} <= set(top.columns)
    with Image.open(report.gallery) as img:
        assert img.format == "PNG" and img.size[1] > 200


# -- label issues -------------------------------------------------------------------------
def test_label_issues_find_the_flipped_forms_and_suggest_the_true_one(env, tmp_path):
    report = find_label_issues(env.emb[REAL], "form", settings=LabelIssueSettings(C=0.1), out=tmp_path)
    frame = report.frame
    found = frame[frame["id"].isin(env.flipped)]
    assert len(found) >= 6  # of the 8 flipped images
    assert (found["suggested"] == found["id"].map(env.true_form)).all()
    assert len(frame) <= len(found) + 4  # few clean images flagged
    assert list(frame["rank"]) == list(range(1, len(frame) + 1))
    assert list(frame["self_confidence"]) == sorted(frame["self_confidence"])
    assert "out_of_fold_proba" in report.result.proba_source
    assert pd.read_csv(report.csv)["id"].tolist() == frame["id"].tolist()
    data = report.to_dict()
    assert data["estimated_noise_rate"] > 0.05 and len(data["confident_joint"]) == 4


# -- duplicates and leaks -----------------------------------------------------------------
def test_duplicates_flag_the_copied_photo_as_a_leak(env, tmp_path):
    report = find_duplicates(env.emb[REAL], out=tmp_path)
    pairs = report.pairs
    original, copy = env.duplicate
    hit = pairs[(pairs["id_a"] == original) & (pairs["id_b"] == copy) | (pairs["id_a"] == copy) & (pairs["id_b"] == original)]
    assert len(hit) == 1 and hit["similarity"].iloc[0] > 0.999
    assert hit["leak_reason"].iloc[0] == "split+group" and hit["label_conflict"].iloc[0] == "glaze"
    assert (pairs.drop(hit.index)["label_conflict"] == "").all()  # two views of one object agree
    same = pairs[~pairs["leak"]]
    assert (same["group_a"] == same["group_b"]).all() and (same["split_a"] == same["split_b"]).all()
    assert copy in report.leaked_ids("val") and original in report.leaked_ids("train")
    strict = find_duplicates(env.emb[REAL], settings=DuplicateSettings(threshold=0.999), out=tmp_path)
    assert len(strict.pairs) == 1
    with pytest.raises(FeatkitError, match="threshold is a cosine similarity"):
        DuplicateSettings(threshold=1.5).validate()


# -- ranking ------------------------------------------------------------------------------
def test_rank_puts_logme_beside_the_probe(env):
    from featkit.fit import FitSettings, fit_tasks

    settings = FitSettings(params={"C": (0.1,)}, refit=False, plot=False, split="group")
    for key in (REAL, RANDOM):
        for result in fit_tasks(env.emb[key], ["form", "decoration"], "logreg", settings=settings):
            result.save()
    report = rank_backbones([env.emb[REAL], env.emb[RANDOM]])
    rows = {(r["key"], r["task"]): r for r in report.rows}
    assert rows[(REAL, "form")]["logme"] > rows[(RANDOM, "form")]["logme"]
    assert rows[(REAL, "form")]["rank_logme"] == 1
    for task in ("form", "decoration"):
        for key in (REAL, RANDOM):
            assert 0 <= rows[(key, task)]["probe_balanced_accuracy"] <= 1 and rows[(key, task)]["head"] == "logreg"
    assert rows[(REAL, "glaze")]["probe_balanced_accuracy"] is None  # no run for glaze
    agreement = {a["task"]: a for a in report.agreement}
    assert agreement["form"]["n"] == 2 and agreement["form"]["spearman"] == 1.0  # real beats random both ways
    assert agreement["glaze"]["spearman"] is None
    assert [s["task"] for s in report.skipped] == ["museum", "museum"]


# -- the CLI ------------------------------------------------------------------------------
def cli(env, *args):
    from featkit_cli.main import app

    return CliRunner().invoke(app, [*args, "--config", str(env.config.root)])


def test_cli_commands_print_json(env):
    out = cli(env, "duplicates", "--variant", "imagenet1k_v1", "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    pair = next(p for p in data["pairs"] if p["leak"])
    assert {"path_a", "path_b", "similarity", "leak", "leak_reason"} <= set(pair)
    assert Path(pair["path_a"]).is_file() and Path(pair["path_b"]).is_file()

    out = cli(env, "separability", "--task", "form,glaze", "--json")
    assert out.exit_code == 0, out.output
    assert {(r["key"], r["task"]) for r in json.loads(out.stdout)["rows"]} == {
        (k, t) for k in (REAL, RANDOM) for t in ("form", "glaze")}

    umap_args = ("umap", "--variant", "imagenet1k_v1", "--task", "form", "-k", "10", "--thumbnails", "5", "--json")
    first = cli(env, *umap_args)
    assert first.exit_code == 0, first.output
    out = cli(env, *umap_args)
    data = json.loads(out.stdout)
    assert data["cached"] and data["n"] == 81 and Path(data["html"]).is_file()
    assert data["aux"] == json.loads(first.stdout)["aux"] and data["png"]["form"].endswith("umap_form.png")

    out = cli(env, "outliers", "--variant", "imagenet1k_v1", "--task", "glaze", "--top", "5", "--no-gallery", "--json")
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)["outliers"]) == 5

    out = cli(env, "label-issues", "--variant", "imagenet1k_v1", "--task", "form", "--C", "0.1", "--top", "4", "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert {"given", "self_confidence", "suggested", "suggested_confidence", "id", "path"} <= set(data["label_issues"][0])
    assert data["left_out_classes"] == {} and Path(data["gallery"]).is_file() and "pairs" not in data
    out = cli(env, "label-issues", "--variant", "imagenet1k_v1", "--task", "form", "--C", "0.1", "--no-gallery")
    assert out.exit_code == 0, out.output
    assert "p(suggested)" in out.stdout and "likely label issues" in out.stdout and "gallery:" not in out.stdout
    out = cli(env, "label-issues", "--variant", "imagenet1k_v1", "--pairs", "--json")  # no task: only the pairs
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert list(data) == ["pairs"] and data["pairs"]["tasks"] == ["form", "glaze", "decoration", "period", "museum"]

    out = cli(env, "rank", "--task", "form", "--json")
    assert out.exit_code == 0, out.output
    assert [r["key"] for r in json.loads(out.stdout)["rows"]][0] == REAL

    out = cli(env, "separability", "--task", "form")
    assert out.exit_code == 0 and "silhouette" in out.stdout


@pytest.mark.parametrize("args,message", [
    (["umap", "--backbone", "resnet50"], "has no features for resnet50"),
    (["umap", "--variant", "imagenet1k_v1", "--neighbors", "200"], "pass --neighbors 80 or fewer"),
    (["separability", "--task", "museum"], "has only class 'British Museum'"),
    (["outliers", "--variant", "random"], "this needs one task; pass --task with one of: form"),
    (["outliers", "--variant", "random", "--task", "form", "--method", "iforest"], "valid choices: knn, lof"),
    (["rank", "--task", "shape"], "unknown task 'shape'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(env, args, message):
    out = cli(env, *args)
    flat = " ".join(out.output.replace("│", " ").split())  # rich wraps long messages in a panel
    assert out.exit_code == 2 and message in flat and "Traceback" not in out.output


def test_cli_without_matplotlib_names_the_extra(env, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = cli(env, "outliers", "--variant", "imagenet1k_v1", "--task", "form")
    assert out.exit_code == 2 and "featkit[plot]" in out.output and "Traceback" not in out.output


# -- search by image ----------------------------------------------------------------------
def test_similar_finds_a_copy_by_id_by_path_and_from_a_new_file(env, tmp_path):
    from featkit.explore.similar import similar

    emb = env.emb[REAL]
    original, copy = env.duplicate
    by_id = similar(emb, copy, k=3)
    assert by_id["id"][0] == original and by_id["score"][0] > 0.999 and copy not in set(by_id["id"])
    by_path = similar(emb, env.config.root / copy, k=1)  # a path inside the collection is its id
    assert by_path["id"][0] == original
    outside = tmp_path / "upload.jpg"
    shutil.copyfile(env.config.root / original, outside)  # not in the collection: embedded like the store
    new = similar(emb, outside, k=2)
    assert set(new["id"]) == {original, copy} and new["score"].min() > 0.99
    vector = similar(emb, emb.X[0], k=1, task="form")  # an embedding: nothing excluded, itself first
    assert vector["id"][0] == emb.ids[0] and vector["score"][0] == pytest.approx(1.0, abs=1e-5)
    form = emb.labels("form")[0]
    same = similar(emb, emb.ids[0], k=5, task="form", label=form)
    assert (same["form"] == form).all() and len(same) == 5
    with pytest.raises(FeatkitError, match="label 'teapot' is not a class of task 'form'"):
        similar(emb, emb.ids[0], task="form", label="teapot")
    with pytest.raises(FeatkitError, match="neither an image id of collection 'vessels' nor an existing file"):
        similar(emb, "images/nowhere.jpg")
