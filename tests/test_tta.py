"""Test-time augmentation (issue 6, item 4): the views, the averaging, the variant.

The averaging is checked against a plain extraction of mirrored copies of the same
images: lossless PNGs whose shorter side is already the resize size and whose crop
margins are even, so mirroring the file and mirroring the crop are the same pixels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from _manifest import write_manifest

from featkit.config import Config
from featkit.errors import FeatkitError
from featkit.extract import ExtractSettings
from featkit.api import Collection
from featkit.backbones import Preprocess
from featkit.store import FeatureStore
from featkit.extract.tta import create_tta, list_tta

FP32 = dict(progress=False, workers=0, batch_size=4, precision="fp32")


def test_registry_names_modes_and_refuses_unknown_ones():
    assert {"none", "hflip", "crops", "hflip+crops"} <= set(list_tta())
    assert [create_tta(m).n_views for m in ("none", "hflip", "crops", "hflip+crops")] == [1, 2, 5, 10]
    assert create_tta("none").variant("imagenet1k_v1") == "imagenet1k_v1"
    assert create_tta("hflip").variant("imagenet1k_v1") == "imagenet1k_v1+tta-hflip"
    with pytest.raises(FeatkitError, match=r"unknown TTA mode 'vflip'; valid choices: .*hflip"):
        create_tta("vflip")
    with pytest.raises(FeatkitError, match="vflip"):
        ExtractSettings(tta="vflip").validate()


def test_crop_views_are_corners_and_centre_of_the_larger_square():
    pre = Preprocess(crop_size=4, resize_size=6)
    tta = create_tta("hflip+crops")
    assert tta.input_size(pre) == 6
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    views = tta.views(x, pre.crop_size)
    assert len(views) == 10 and all(v.shape == (2, 3, 4, 4) for v in views)
    tl, tr, bl, br, centre = views[:5]
    assert torch.equal(tl, x[..., :4, :4]) and torch.equal(br, x[..., 2:, 2:])
    assert torch.equal(tr, x[..., :4, 2:]) and torch.equal(bl, x[..., 2:, :4])
    assert torch.equal(centre, x[..., 1:5, 1:5])
    assert all(torch.equal(m, torch.flip(v, dims=[-1])) for v, m in zip(views[:5], views[5:]))
    # the decoder hands over the resize square; its centre crop is the plain view
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 13, 3), dtype=np.uint8))
    plain = pre.image_transform()(img)
    assert torch.equal(tta.views(tta.image_transform(pre)(img)[None], 4)[4][0], plain)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> Config:
    """3 PNGs of 320x256 (no resize, even crop margins) and their mirror images."""
    root = tmp_path_factory.mktemp("tta")
    (root / "images").mkdir()
    rng = np.random.default_rng(6)
    rows = []
    for i in range(3):
        # smooth blobs, so the image looks like a photo rather than noise
        small = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((320, 256), Image.BICUBIC)
        for name, im in ((f"im{i}.png", img), (f"im{i}_mirror.png", img.transpose(Image.FLIP_LEFT_RIGHT))):
            im.save(root / "images" / name)
            rows.append({"image": f"images/{name}", "kind": "mirror" if "mirror" in name else "orig"})
    return write_manifest(root, rows, name="mirrored", task="kind")


def test_hflip_rows_average_the_image_and_its_mirror_in_their_own_variant(mirrored):
    plain = Collection(mirrored).extract_summary("mobilenet_v2", settings=ExtractSettings(**FP32))
    result = CliRunner().invoke(_app(), ["extract", "--config", str(mirrored.root), "--tta", "hflip", "--fp32",
                                         "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["key"] == "mobilenet_v2/imagenet1k_v1+tta-hflip" and summary["computed"] == 6

    store = FeatureStore(mirrored.store_path)
    assert set(store.keys()) == {plain.key, summary["key"]}  # plain rows are untouched
    assert store.meta(summary["key"])["tta"] == "hflip"
    rows = dict(zip(store.load(plain.key).ids, store.load(plain.key).X))
    tta = store.load(summary["key"])
    for image_id, x in zip(tta.ids, tta.X):
        if "mirror" in image_id:
            continue
        expected = (rows[image_id] + rows[image_id.replace(".png", "_mirror.png")]) / 2
        np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-5)
        assert not np.allclose(x, rows[image_id], rtol=1e-3, atol=1e-3)  # it did change something


def test_crops_mode_stores_its_own_rows(mirrored):
    settings = ExtractSettings(**FP32, tta="crops", limit=2)
    summary = Collection(mirrored).extract_summary("mobilenet_v2", settings=settings)
    assert summary.key.endswith("+tta-crops") and summary.computed == 2 and summary.failed == 0
    X = FeatureStore(mirrored.store_path).load(summary.key).X
    assert X.shape == (2, 1280) and np.isfinite(X).all() and (X > 0).any()


def _app():
    from featkit_cli.main import app

    return app
