"""The backbone registry: ``register_backbone`` / ``list_backbones`` / ``create_backbone``.

A backbone is an ImageNet CNN (or ViT) whose forward pass returns the pooled
pre-logits embedding. Each carries its preprocessing and embedding size, per
weights tag, like torchvision's ``Weights`` and timm's ``PretrainedCfg``.
Names are ``arch`` or ``arch.tag`` (``resnet50.imagenet1k_v2``); ``random`` is the
from-scratch baseline with the default tag's preprocessing.

The registry itself imports no torch: names, sizes and default tags are plain data,
so the CLI checks ``--backbone`` while parsing its arguments; a spec's weights table
(read from torchvision's weight enums) is built on first use, and networks are built
by :func:`create_backbone`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from featkit.backbones.preprocess import Preprocess
from featkit.backbones.weights import WeightsFile, file_sha256, guarded_load
from featkit.errors import FeatkitError, choices_message
from featkit.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from featkit.backbones.model import Backbone

RANDOM = "random"


@dataclass(frozen=True)
class WeightsSpec:
    """One set of pretrained weights for a backbone."""

    tag: str  # lower-case, e.g. "imagenet1k_v1"; the store variant name
    file: WeightsFile
    preprocess: Preprocess


class LazyWeights(Mapping):
    """A weights table built on first access (``factory()`` -> {tag: WeightsSpec})."""

    def __init__(self, factory: Callable[[], Mapping[str, WeightsSpec]]) -> None:
        self._factory = factory
        self._table: Mapping[str, WeightsSpec] | None = None

    def _get(self) -> Mapping[str, WeightsSpec]:
        if self._table is None:
            self._table = dict(self._factory())
        return self._table

    def __getitem__(self, tag: str) -> WeightsSpec:
        return self._get()[tag]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about an architecture without building it."""

    name: str
    dim: int
    build: Callable[[str | None], "nn.Module"]  # weights tag (None: random init) -> headless model
    weights: Mapping[str, WeightsSpec] = field(default_factory=dict)  # a dict or a LazyWeights
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


_REGISTRY: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec``; a name registered twice is a ValueError (as torchvision's registry does)."""
    return _REGISTRY.register(spec.name, spec)


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching ``pattern`` (fnmatch, as timm's ``list_models``)."""
    return sorted(_REGISTRY.names(pattern))


def check_backbone_name(name: str) -> str:
    """``name`` (``arch`` or ``arch.tag``) if its architecture is registered; else the error listing them."""
    _REGISTRY.get(name.split(".", 1)[0])
    return name


def get_backbone_spec(name: str) -> BackboneSpec:
    return _REGISTRY.get(name.split(".", 1)[0])


def parse_name(name: str, weights: str | None = None) -> tuple[BackboneSpec, str]:
    """``resnet50.imagenet1k_v2`` or (``resnet50``, weights) -> (spec, tag)."""
    spec = get_backbone_spec(name)
    tag_in_name = name.split(".", 1)[1] if "." in name else None
    tag = (weights or tag_in_name or spec.default_weights or RANDOM).lower()
    if tag in ("imagenet", "pretrained", "default") and tag not in spec.weights:
        tag = spec.default_weights or RANDOM
    if tag != RANDOM:
        spec.weights_spec(tag)
    return spec, tag


def create_backbone(name: str, *, weights: str | None = None, seed: int = 0) -> "Backbone":
    """Build ``name`` with ``weights`` (a tag, ``"random"``, or None for the default).

    Random weights are seeded so the from-scratch baseline is reproducible.
    """
    import torch

    from featkit.backbones.model import Backbone

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
        spec = _REGISTRY.get(name)
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
