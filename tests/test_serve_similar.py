"""`featkit similar`: the shell side of search by image (the search itself is featkit.explore.similar)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
from typer.testing import CliRunner

from featkit_cli.main import app

runner = CliRunner()


def test_similar_by_id_and_label(demo_store, monkeypatch):
    config, _ = demo_store
    monkeypatch.chdir(config.root)
    query = pd.read_csv(config.manifest_path, dtype=str)["image"][3]
    result = runner.invoke(app, ["similar", query, "--k", "4", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    scores = [r["score"] for r in doc["results"]]
    assert doc["query"] == query and len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert query not in [r["id"] for r in doc["results"]]
    only = json.loads(runner.invoke(app, ["similar", query, "--k", "5", "--task", "glaze", "--label", "celadon",
                                          "--json"]).stdout)
    assert {r["glaze"] for r in only["results"]} == {"celadon"}
    from featkit_cli._common import console

    monkeypatch.setattr(console, "_width", 60)  # a narrow terminal (or a log): the ids are still whole
    table = runner.invoke(app, ["similar", query, "--k", "4"])
    assert table.exit_code == 0 and all(r["id"] in table.output for r in doc["results"]), table.output


def test_similar_to_a_file_outside_the_collection(demo_store, tmp_path, monkeypatch):
    config, _ = demo_store
    query = pd.read_csv(config.manifest_path, dtype=str)["image"][0]
    outside = tmp_path / "new photo.jpg"
    shutil.copyfile(config.root / query, outside)
    monkeypatch.chdir(config.root)
    result = runner.invoke(app, ["similar", str(outside), "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)["results"][0]
    assert first["id"] == query and first["score"] > 0.999  # embedded like the store's rows: its twin scores ~1
    bad = runner.invoke(app, ["similar", "images/nope.jpg"])
    assert bad.exit_code == 2 and "neither an image id" in " ".join(bad.output.split())
