"""Search by image: exact cosine top-k, by collection image or by a new file embedded like the store's rows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featkit.errors import FeatkitError
from featkit.explore.similar import SimilarSettings, label_mask, similar_images, top_k
from featkit_cli.main import app

runner = CliRunner()


def test_top_k_is_exact_filtered_and_stable():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    q = X[7] + 0.01 * rng.normal(size=16).astype(np.float32)
    rows, scores = top_k(X, q, 5)
    expected = np.argsort(-(X @ (q / np.linalg.norm(q))), kind="stable")[:6]
    assert rows.tolist() == expected[:5].tolist() and rows[0] == 7 and np.all(np.diff(scores) <= 0)
    rows, _ = top_k(X, q, 5, exclude=7)
    assert 7 not in rows and rows.tolist() == expected[1:6].tolist()
    allowed = np.zeros(200, bool)
    allowed[[3, 150, 199]] = True
    rows, _ = top_k(X, q, 10, allowed=allowed)
    assert sorted(rows.tolist()) == [3, 150, 199]  # fewer candidates than k: all of them
    twins = np.vstack([X[:1], X[:1], X[:1]])
    assert top_k(twins, X[0], 3)[0].tolist() == [0, 1, 2]  # ties keep row order
    with pytest.raises(FeatkitError, match="dimensions"):
        top_k(X, np.ones(3), 2)
    assert label_mask(np.array(["a", None, "b"], dtype=object), "a").tolist() == [True, False, False]
    assert label_mask(np.array(["a", None, "b"], dtype=object), None).tolist() == [True, False, True]


def test_similar_by_id_path_and_new_file(demo_store, tmp_path):
    config, key = demo_store
    manifest = pd.read_csv(config.manifest_path, dtype=str)
    query = manifest["image"][0]
    by_id = similar_images(config, query, settings=SimilarSettings(k=6))
    assert len(by_id) == 6 and query not in by_id["id"].tolist()
    assert by_id["rank"].tolist() == list(range(1, 7)) and by_id["score"].is_monotonic_decreasing
    assert {"id", "score", "path", "form", "glaze", "decoration", "period", "group"} <= set(by_id.columns)
    assert by_id.loc[0, "path"] == str(config.root / by_id.loc[0, "id"])
    by_path = similar_images(config, config.root / query, settings=SimilarSettings(k=6))
    assert by_path["id"].tolist() == by_id["id"].tolist()
    glaze = manifest["glaze"][0]
    filtered = similar_images(config, query, settings=SimilarSettings(k=5, task="glaze", label=glaze))
    assert (filtered["glaze"] == glaze).all() and len(filtered) == 5
    # a file outside the collection is embedded with the store's backbone: its twin in the store scores ~1
    outside = tmp_path / "new photo.jpg"
    shutil.copyfile(config.root / query, outside)
    new = similar_images(config, outside, key=key, settings=SimilarSettings(k=3))
    assert new["id"][0] == query and new["score"][0] > 0.999


def test_bad_queries_say_what_is_wrong(demo_store, tmp_path):
    config, _ = demo_store
    with pytest.raises(FeatkitError, match="neither an image id"):
        similar_images(config, "images/nope.jpg")
    with pytest.raises(FeatkitError, match="needs a task"):
        similar_images(config, "x", settings=SimilarSettings(label="celadon"))
    with pytest.raises(FeatkitError, match="unknown task"):
        similar_images(config, pd.read_csv(config.manifest_path)["image"][0],
                       settings=SimilarSettings(task="colour"))
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(FeatkitError, match="not an image"):
        similar_images(config, text)


def test_cli_similar(demo_store, monkeypatch):
    config, _ = demo_store
    monkeypatch.chdir(config.root)
    query = pd.read_csv(config.manifest_path, dtype=str)["image"][3]
    result = runner.invoke(app, ["similar", query, "--k", "4", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["query"] == query and len(doc["results"]) == 4 and doc["results"][0]["score"] >= doc["results"][3]["score"]
    table = runner.invoke(app, ["similar", query, "--k", "4"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and doc["results"][0]["id"] in table.output
    bad = runner.invoke(app, ["similar", "images/nope.jpg"])
    assert bad.exit_code == 2 and "neither an image id" in " ".join(bad.output.split())
