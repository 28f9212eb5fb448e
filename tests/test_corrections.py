"""Corrections as data: an append-only file beside the manifest, applied on top of labels.csv, never in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from featkit.config import Config
from featkit.data.corrections import (COLUMNS, append_corrections, apply_corrections, corrections_path,
                                      export_corrected_manifest, make_correction, read_corrections)
from featkit.data.manifest import load_manifest
from featkit.demo import make_demo_collection
from featkit.errors import FeatkitError
from featkit_cli.main import app

runner = CliRunner()


@pytest.fixture
def manifest_config(tmp_path) -> Config:
    """6 rendered images, the manifest in a sub-folder of the collection root."""
    make_demo_collection(tmp_path / "data", n_objects=3, size=64)
    config = Config(root=tmp_path, name="pots", manifest=Path("data/labels.csv"), image_column="image",
                    tasks=("form", "glaze", "decoration", "period"), group="object_id")
    config.write()
    return config


def _decide(config: Config, image_id: str, task: str, old, new, queue: str = "label-issues") -> dict:
    return make_correction(id=image_id, task=task, old=old, new=new, user="ann", queue=queue)


def test_the_file_lives_beside_the_manifest_or_beside_featkit_toml(manifest_config, tmp_path):
    assert corrections_path(manifest_config) == tmp_path / "data" / "corrections.csv"
    folder = Config(root=tmp_path, name="f", image_folder=Path("tree"))
    assert corrections_path(folder) == tmp_path / "corrections.csv"


def test_appends_keep_history_and_the_latest_decision_wins(tmp_path):
    path = tmp_path / "corrections.csv"
    assert read_corrections(path).columns.tolist() == list(COLUMNS) and read_corrections(path).empty
    append_corrections(path, [make_correction(id="a.jpg", task="glaze", old="celadon", new="sancai", user="ann"),
                              make_correction(id="b.jpg", task="glaze", old="sancai", new=None, user="bob",
                                              queue="outliers")])
    append_corrections(path, [make_correction(id="a.jpg", task="glaze", old="sancai", new="tea_dust", user="bob")])
    history = read_corrections(path, latest=False)
    assert history["new"].tolist() == ["sancai", "", "tea_dust"]  # None is written as "" (marked unknown)
    latest = read_corrections(path)
    assert sorted(zip(latest["id"], latest["new"], latest["user"])) == [("a.jpg", "tea_dust", "bob"), ("b.jpg", "", "bob")]
    assert path.read_text().count("id,task,old,new,time,user,queue") == 1  # one header


def test_apply_changes_a_copy_and_counts_what_changed():
    ids = ("a", "b", "c", "d")
    labels = {"glaze": np.array(["x", "y", None, "x"], dtype=object), "form": np.array(["p", "q", "p", "q"], dtype=object)}
    decisions = pd.DataFrame([
        {"id": "a", "task": "glaze", "new": "y"},  # changed
        {"id": "b", "task": "glaze", "new": ""},  # marked unknown
        {"id": "c", "task": "glaze", "new": "x"},  # unknown -> x
        {"id": "d", "task": "form", "new": "q"},  # confirmed: already q
        {"id": "zz", "task": "glaze", "new": "x"},  # not in the collection
        {"id": "a", "task": "colour", "new": "red"},  # not a task
        {"id": "a", "task": "form", "new": "r"},  # overridden below: the latest wins
        {"id": "a", "task": "form", "new": "p"},
    ]).reindex(columns=list(COLUMNS), fill_value="")
    fixed, summary = apply_corrections(ids, labels, decisions)
    assert fixed["glaze"].tolist() == ["y", None, "x", "x"] and fixed["form"].tolist() == ["p", "q", "p", "q"]
    assert labels["glaze"].tolist() == ["x", "y", None, "x"]  # inputs untouched
    assert summary == {"applied": 3, "by_task": {"glaze": 3, "form": 0}, "marked_unknown": 1, "confirmed": 2,
                       "unknown_ids": ["zz"], "unknown_tasks": ["colour"]}


APPENDER = """
import sys
from pathlib import Path
from featkit.data.corrections import append_corrections, make_correction
path, worker = Path(sys.argv[1]), sys.argv[2]
for i in range(60):
    append_corrections(path, [make_correction(id=f"img-{worker}-{i}.jpg", task="glaze", old="a", new="b",
                                              user=f"tab{worker}")])
"""


def test_processes_appending_at_once_lose_nothing(tmp_path):
    path = tmp_path / "corrections.csv"
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(w)]) for w in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    frame = read_corrections(path, latest=False)
    assert len(frame) == 180 and frame["id"].nunique() == 180
    assert set(frame["user"]) == {"tab0", "tab1", "tab2"} and (frame["new"] == "b").all()


def test_bad_rows_and_bad_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(FeatkitError, match="one line"):
        make_correction(id="a.jpg", task="glaze", old="x", new="two\nlines")
    with pytest.raises(FeatkitError, match="non-empty image id"):
        make_correction(id=" ", task="glaze", old="x", new="y")
    bad = tmp_path / "corrections.csv"
    bad.write_text("image,label\na.jpg,x\n")
    with pytest.raises(FeatkitError, match="lacks column"):
        read_corrections(bad)


def test_export_applies_corrections_and_never_edits_labels_csv(manifest_config, tmp_path):
    manifest = manifest_config.manifest_path
    before = manifest.read_bytes()
    rows = pd.read_csv(manifest, dtype=str)
    first, second = rows["image"][0], rows["image"][1]
    append_corrections(corrections_path(manifest_config), [
        _decide(manifest_config, first, "glaze", rows["glaze"][0], "sancai"),
        _decide(manifest_config, second, "period", rows["period"][1], None)])
    given = load_manifest(manifest_config, corrections=False)
    out = export_corrected_manifest(given, tmp_path / "exports" / "fixed.csv")
    assert manifest.read_bytes() == before
    fixed = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert fixed.columns.tolist() == rows.columns.tolist() and len(fixed) == len(rows)
    assert fixed["glaze"][0] == "sancai" and fixed["period"][1] == "" and fixed["form"].tolist() == rows["form"].tolist()
    assert all((out.parent / p).is_file() for p in fixed["image"])  # paths rebased onto the new file's folder
    default = export_corrected_manifest(given)
    assert default == manifest.with_name("labels.corrected.csv")
    assert pd.read_csv(default, dtype=str)["image"].tolist() == rows["image"].tolist()  # same folder: same paths
    subset = export_corrected_manifest(given, tmp_path / "data" / "subset.csv", ids=[second])
    assert pd.read_csv(subset, dtype=str, keep_default_na=False)[["image", "period"]].values.tolist() == [[second, ""]]
    with pytest.raises(FeatkitError, match="not in collection"):
        export_corrected_manifest(given, tmp_path / "x.csv", ids=["images/nope.jpg"])


def test_export_of_an_image_folder_collection_writes_a_manifest(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / "tree" / cls / f"{i}.png")
    config = Config(root=tmp_path, name="pets", image_folder=Path("tree"), tasks=("animal",))
    append_corrections(corrections_path(config), [make_correction(id="cat/1.png", task="animal", old="cat", new="dog")])
    out = export_corrected_manifest(load_manifest(config, corrections=False), tmp_path / "pets.csv")
    frame = pd.read_csv(out, dtype=str)
    assert frame.values.tolist() == [["tree/cat/0.png", "cat"], ["tree/cat/1.png", "dog"], ["tree/dog/0.png", "dog"],
                                     ["tree/dog/1.png", "dog"]]


def test_cli_lists_and_exports(manifest_config, tmp_path, monkeypatch):
    rows = pd.read_csv(manifest_config.manifest_path, dtype=str)
    path = corrections_path(manifest_config)
    append_corrections(path, [_decide(manifest_config, rows["image"][0], "glaze", rows["glaze"][0], "sancai"),
                              _decide(manifest_config, rows["image"][0], "glaze", "sancai", "tea_dust"),
                              _decide(manifest_config, "images/gone.jpg", "glaze", "x", "y")])
    monkeypatch.chdir(tmp_path)
    listed = runner.invoke(app, ["corrections", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.stdout)
    assert [c["new"] for c in doc["corrections"]] == ["tea_dust", "y"]
    assert doc["summary"]["applied"] == 1 and doc["summary"]["unknown_ids"] == ["images/gone.jpg"]
    assert len(json.loads(runner.invoke(app, ["corrections", "list", "--all", "--json"]).stdout)["corrections"]) == 3
    table = runner.invoke(app, ["corrections", "list"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "tea_dust" in table.output and "1 labels changed" in table.output
    exported = runner.invoke(app, ["corrections", "export", "--out", "out.csv", "--json"])
    assert exported.exit_code == 0, exported.output
    assert pd.read_csv(tmp_path / "out.csv", dtype=str)["glaze"][0] == "tea_dust"
    path.write_text("garbage\n")
    broken = runner.invoke(app, ["corrections", "list"])
    assert broken.exit_code == 2 and "lacks column" in " ".join(broken.output.split())


def test_fit_applies_corrections_and_says_how_many(tmp_path):
    """A curator's decision reaches every reader of the labels; --no-corrections reads labels.csv as given."""
    import featkit as fk
    from featkit_cli.main import app as cli

    make_demo_collection(tmp_path / "data", n_objects=16, size=64)
    manifest_config = Config(root=tmp_path, name="pots", manifest=Path("data/labels.csv"), image_column="image",
                             tasks=("form", "glaze", "decoration", "period"), group="object_id")
    manifest_config.write()
    col = fk.open(manifest_config.root)
    emb = col.extract("mobilenet_v2", progress=False, workers=0)
    rows = pd.read_csv(manifest_config.manifest_path, dtype=str)
    first = rows["image"][0]
    other = next(g for g in sorted(set(rows["glaze"])) if g != rows["glaze"][0])
    append_corrections(corrections_path(manifest_config), [
        _decide(manifest_config, first, "glaze", rows["glaze"][0], other),
        _decide(manifest_config, rows["image"][1], "period", rows["period"][1], None)])
    corrected = fk.open(manifest_config.root)
    assert corrected.labels("glaze")[0] == other and corrected.labels("period")[1] is None
    assert corrected.manifest.corrections["applied"] == 2
    assert fk.open(manifest_config.root, corrections=False).labels("glaze")[0] == rows["glaze"][0]
    res = corrected.embeddings(key=emb.key).fit("glaze", "logreg", cv=2, split="stratified", params={"C": (0.1,)},
                                                plot=False)
    assert res.report["corrections"] == {"ignored": False, "file": str(corrections_path(manifest_config)),
                                         "applied": 1, "marked_unknown_all_tasks": 1, "applied_all_tasks": 2}
    runner = CliRunner()
    base = ["--config", str(manifest_config.root), "--json"]
    fitted = json.loads(runner.invoke(cli, ["fit", "-t", "period", "-p", "C=0.1", "--cv", "2", "--no-model",
                                            "--split", "stratified", "--out", str(tmp_path / "p"), *base]).stdout)
    assert fitted["corrections"]["applied"] == 1 and fitted["rows"]["unknown"] == 1
    ignored = json.loads(runner.invoke(cli, ["fit", "-t", "period", "-p", "C=0.1", "--cv", "2", "--no-model",
                                             "--split", "stratified", "--no-corrections", "--out", str(tmp_path / "q"),
                                             *base]).stdout)
    assert ignored["corrections"] == {"ignored": True, "applied": 0} and ignored["rows"]["unknown"] == 0
    assert "period corrected by" not in (tmp_path / "q" / "report.md").read_text()


def test_label_issues_report_how_many_corrections_they_read(tmp_path):
    import featkit as fk

    make_demo_collection(tmp_path / "data", n_objects=16, size=64)
    config = Config(root=tmp_path, name="pots", manifest=Path("data/labels.csv"), image_column="image",
                    tasks=("form", "glaze"), group="object_id")
    config.write()
    rows = pd.read_csv(config.manifest_path, dtype=str)
    other = next(g for g in sorted(set(rows["glaze"])) if g != rows["glaze"][0])
    append_corrections(corrections_path(config), [_decide(config, rows["image"][0], "glaze", rows["glaze"][0], other)])
    emb = fk.open(tmp_path).extract("mobilenet_v2", progress=False, workers=0)
    report = emb.label_issues("glaze", C=0.1, cv=3, gallery=False).to_dict()
    assert report["corrections"]["applied"] == 1 and report["corrections"]["file"].endswith("corrections.csv")
