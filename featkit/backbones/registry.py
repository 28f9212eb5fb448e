"""The backbone registry: ``register_backbone`` / ``list_backbones`` / ``create_backbone``.

A backbone is an ImageNet CNN (or ViT) whose forward pass returns the pooled
pre-logits embedding. Each carries its preprocessing and embedding size, per
weights tag, like torchvision's ``Weights`` and timm's ``PretrainedCfg``.
Names are ``arch`` or ``arch.tag`` (``resnet50.imagenet1k_v2``); ``random`` is the
from-scratch baseline with the default tag's preprocessing.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from featkit.backbones.preprocess import Preprocess
from featkit.backbones.weights import WeightsFile, file_sha256, guarded_load
from featkit.errors import FeatkitError, choices_message

RANDOM = "random"


@dataclass(frozen=True)
class WeightsSpec:
    """One set of pretrained weights for a backbone."""

    tag: str  # lower-case, e.g. "imagenet1k_v1"; the store variant name
    file: WeightsFile
    preprocess: Preprocess


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about an architecture without building it."""

    name: str
    dim: int
    build: Callable[[str | None], nn.Module]  # weights tag (None: random init) -> headless model
    weights: dict[str, WeightsSpec] = field(default_factory=dict)
    default_weights: str = ""
    family: str = "torchvision"

    @property
    def default_preprocess(self) -> Preprocess:
        if self.default_weights:
            return self.weights[self.default_weights].preprocess
        return Preprocess()

    def weights_spec(self, tag: str) -> WeightsSpec:
        if tag not in self.weights:
            raise FeatkitError(choices_message(f"weights for {self.name}", tag, [*self.weights, RANDOM]))
        return self.weights[tag]


class Backbone(nn.Module):
    """A network that maps normalised images (B, 3, H, W) to embeddings (B, dim)."""

    def __init__(self, spec: BackboneSpec, model: nn.Module, *, weights: str,
                 weights_sha256: str, preprocess: Preprocess) -> None:
        super().__init__()
        self.model = model
        self.name = spec.name
        self.dim = spec.dim
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.preprocess = preprocess

    @property
    def variant(self) -> str:
        """The store group below the backbone name: the weights tag."""
        return self.weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):  # inception's aux output in train mode
            out = out[0]
        return torch.flatten(out, 1)


_REGISTRY: dict[str, BackboneSpec] = {}
_builtins_loaded = False


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    _ensure_builtins()  # so a plug-in registered first neither hides the built-ins nor steals their names
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # before the import: the built-ins register through register_backbone
    try:
        from featkit.backbones import builtin  # noqa: F401  (registers on import)
    except BaseException:
        _builtins_loaded = False
        raise


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching ``pattern`` (fnmatch, as timm's ``list_models``)."""
    _ensure_builtins()
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_backbone_spec(name: str) -> BackboneSpec:
    _ensure_builtins()
    arch = name.split(".", 1)[0]
    if arch not in _REGISTRY:
        raise FeatkitError(choices_message("backbone", arch, list(_REGISTRY)))
    return _REGISTRY[arch]


def parse_name(name: str, weights: str | None = None) -> tuple[BackboneSpec, str]:
    """``resnet50.imagenet1k_v2`` or (``resnet50``, weights) -> (spec, tag)."""
    spec = get_backbone_spec(name)
    tag_in_name = name.split(".", 1)[1] if "." in name else None
    tag = (weights or tag_in_name or spec.default_weights or RANDOM).lower()
    if tag in ("imagenet", "pretrained", "default"):
        tag = spec.default_weights or RANDOM
    if tag != RANDOM:
        spec.weights_spec(tag)
    return spec, tag


def create_backbone(name: str, *, weights: str | None = None, seed: int = 0) -> Backbone:
    """Build ``name`` with ``weights`` (a tag, ``"random"``, or None for the default).

    Random weights are seeded so the from-scratch baseline is reproducible.
    """
    spec, tag = parse_name(name, weights)
    if tag == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = spec.build(None)
        return Backbone(spec, model.eval(), weights=RANDOM, weights_sha256=f"random-seed{seed}",
                        preprocess=spec.default_preprocess)
    wspec = spec.weights_spec(tag)
    model = guarded_load(spec.name, tag, wspec.file, lambda: spec.build(tag))
    sha = file_sha256(wspec.file.cache_path) if wspec.file.cache_path.is_file() else wspec.file.filename
    return Backbone(spec, model.eval(), weights=tag, weights_sha256=sha, preprocess=wspec.preprocess)


def describe_backbones(pattern: str = "*") -> list[dict]:
    """Rows for ``featkit backbones``: name, dim, input size, weights and availability."""
    rows = []
    for name in list_backbones(pattern):
        spec = _REGISTRY[name]
        tag = spec.default_weights
        wspec = spec.weights.get(tag)
        rows.append(
            {
                "name": name,
                "dim": spec.dim,
                "input_size": spec.default_preprocess.crop_size,
                "weights": tag or RANDOM,
                "all_weights": sorted(spec.weights),
                "available": bool(wspec and wspec.file.is_available()),
                "file": wspec.file.filename if wspec else None,
            }
        )
    return rows
