"""Search by image (the workbench's stand-in for main's coming featkit.explore.similar, and `featkit similar`):
exact cosine top-k by collection image, by path, or by a new file embedded like the store's rows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featkit.errors import FeatkitError
from featkit.explore.embeddings import load_embeddings
from featkit.serve.backend import search_images, similar
from featkit_cli.main import app

runner = CliRunner()


def test_similar_is_exact_filtered_and_never_returns_the_query(demo_store):
    config, key = demo_store
    emb = load_embeddings(config, key=key)
    query = str(emb.ids[0])
    found = similar(emb, query, k=6)
    Xn = emb.X / np.linalg.norm(emb.X, axis=1, keepdims=True)
    expected = np.argsort(-(Xn @ Xn[0]), kind="stable")[1:7]
    assert found["id"].tolist() == emb.ids[expected].astype(str).tolist()
    assert np.allclose(found["score"], (Xn @ Xn[0])[expected], atol=1e-5) and found["score"].is_monotonic_decreasing
    assert list(found.columns) == ["id", "score", "path", "form", "glaze", "decoration", "period"]
    assert found["path"][0] == str(config.root / found["id"][0])
    assert similar(emb, config.root / query, k=6)["id"].tolist() == found["id"].tolist()  # by path
    as_vector = similar(emb, emb.X[0], k=6)
    assert as_vector["id"][0] == query and as_vector["id"].tolist()[1:] == found["id"].tolist()[:5]
    glaze = emb.labels("glaze")[0]
    only = similar(emb, query, k=5, task="glaze", label=glaze)
    assert len(only) == 5 and (only["glaze"] == glaze).all()
    assert len(similar(emb, query, k=1000)) == len(emb) - 1  # k larger than the collection: all others
    with pytest.raises(FeatkitError, match="neither an image id"):
        similar(emb, "images/nope.jpg")
    with pytest.raises(FeatkitError, match="needs a task"):
        similar(emb, query, label="celadon")
    with pytest.raises(FeatkitError, match="unknown task"):
        similar(emb, query, task="colour")


def test_a_new_file_is_embedded_like_the_store_rows(demo_store, tmp_path):
    config, key = demo_store
    query = pd.read_csv(config.manifest_path, dtype=str)["image"][0]
    outside = tmp_path / "new photo.jpg"
    shutil.copyfile(config.root / query, outside)
    found = search_images(config, str(outside), key=key, k=3)
    assert found["id"][0] == query and found["score"][0] > 0.999  # its twin in the store
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(FeatkitError, match="not an image"):
        search_images(config, str(text))


def test_cli_similar(demo_store, monkeypatch):
    config, _ = demo_store
    monkeypatch.chdir(config.root)
    query = pd.read_csv(config.manifest_path, dtype=str)["image"][3]
    result = runner.invoke(app, ["similar", query, "--k", "4", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["query"] == query and len(doc["results"]) == 4 and doc["results"][0]["score"] >= doc["results"][3]["score"]
    assert query not in [r["id"] for r in doc["results"]]
    table = runner.invoke(app, ["similar", query, "--k", "4", "--task", "glaze", "--label", "celadon"],
                          env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "celadon" in table.output
    bad = runner.invoke(app, ["similar", "images/nope.jpg"])
    assert bad.exit_code == 2 and "neither an image id" in " ".join(bad.output.split())
