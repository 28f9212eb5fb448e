"""The notebooks run top to bottom on the demo data (executed with nbclient), so they never rot.

The real-collection notebook reads its collection from ``FEATKIT_COLLECTION``; here
that is a copy of the embedded demo collection, so CI needs no real data.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAGES = sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def collection_dir(demo_store, tmp_path_factory):
    """The demo collection with a store of its own (the notebooks write UMAP caches and figures)."""
    from featkit.config import Config

    demo, _ = demo_store
    root = tmp_path_factory.mktemp("notebook-collection")
    (root / "features").mkdir()
    shutil.copyfile(demo.store_path, root / "features" / "vessels.h5")
    Config(root=root, name="vessels", manifest=demo.manifest_path, image_column="image", tasks=demo.tasks,
           group=demo.group).write()
    return root


def run(path: Path, cwd: Path) -> nbformat.NotebookNode:
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return book


def outputs(book, kind: str) -> list:
    return [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
            if o.get("output_type") == kind or kind in o.get("data", {})]


def test_the_notebooks_use_the_python_api_and_define_no_library_code():
    assert [p.name for p in PAGES] == ["01_demo_clusters.ipynb", "02_real_collection.ipynb",
                                       "03_real_clusters.ipynb"]
    for path in PAGES:
        book = nbformat.read(path, as_version=4)
        for cell in book.cells:
            if cell.cell_type != "code":
                continue
            assert not cell.get("outputs"), f"{path.name} is committed with outputs"
            tree = ast.parse(cell.source)
            defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert not defined, f"{path.name} defines {defined}: library code belongs in featkit"
        assert any("import featkit as fk" in c.source for c in book.cells)
        assert not any("featkit.store" in c.source or "featkit.config" in c.source for c in book.cells), \
            f"{path.name} reaches past the API"


@pytest.mark.slow
def test_demo_clusters_notebook_runs(collection_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATKIT_DEMO_DIR", str(collection_dir))
    book = run(NOTEBOOKS / "01_demo_clusters.ipynb", tmp_path)
    assert not outputs(book, "error")
    assert len(outputs(book, "image/png")) >= 3  # two UMAP figures and the outlier gallery
    assert (collection_dir / "explore" / "mobilenet_v2__imagenet1k_v1" / "outliers_form.png").is_file()
    text = "".join(o.get("text", "") for o in outputs(book, "stream"))
    assert "80 images, tasks form, glaze, decoration, period" in text and "k = " in text


@pytest.mark.slow
def test_real_collection_notebook_runs_on_demo_data(collection_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATKIT_COLLECTION", str(collection_dir))
    book = run(NOTEBOOKS / "02_real_collection.ipynb", tmp_path)
    assert not outputs(book, "error")
    text = "".join(o.get("text", "") for o in outputs(book, "stream"))
    assert "vessels: 80 images" in text and "near-duplicate pairs" in text and "likely issues" in text
    assert len(outputs(book, "image/png")) >= 2


@pytest.mark.slow
def test_real_clusters_notebook_runs_on_clothing(clothing_store, tmp_path, monkeypatch):
    """The cluster notebook on the real clothing photos (the cached store of the real-data tests)."""
    config, _ = clothing_store
    config.write()  # featkit.toml beside the cached store, so the notebook opens that collection
    monkeypatch.setenv("FEATKIT_COLLECTION", str(config.root))
    book = run(NOTEBOOKS / "03_real_clusters.ipynb", tmp_path)
    assert not outputs(book, "error")
    text = "".join(o.get("text", "") for o in outputs(book, "stream"))
    assert "clothing: 5398 embedded images" in text and "k = " in text
    assert len(outputs(book, "image/png")) >= 2  # the cluster gallery and the mixed cluster
    assert (config.explore_dir("mobilenet_v2/imagenet1k_v1") / "mixed_cluster.png").is_file()


@pytest.mark.slow
def test_real_clusters_notebook_runs_on_demo_data(collection_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATKIT_COLLECTION", str(collection_dir))
    book = run(NOTEBOOKS / "03_real_clusters.ipynb", tmp_path)
    assert not outputs(book, "error")


def test_extraction_shows_a_live_progress_bar_in_a_notebook(demo_config, tmp_path):
    """rich draws its bar as a Jupyter widget (ipywidgets), not as terminal text nor a warning."""
    root = tmp_path / "small"
    shutil.copytree(demo_config.root, root, ignore=shutil.ignore_patterns("features", "runs", "explore"))
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"import featkit as fk\nemb = fk.open({str(root)!r}).extract('mobilenet_v2', limit=4, workers=0)\n"
        "print(emb.key)")])
    NotebookClient(book, timeout=600, kernel_name="python3").execute()
    assert not outputs(book, "error")
    assert outputs(book, "application/vnd.jupyter.widget-view+json")  # the bar, as a widget
    streams = "".join(o.get("text", "") for o in outputs(book, "stream"))
    assert "mobilenet_v2/imagenet1k_v1" in streams and "ipywidgets" not in streams
