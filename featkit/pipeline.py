"""Glue between a collection's config and the library pieces (what commands call)."""

from __future__ import annotations

from typing import Callable

from featkit.backbones import Backbone, create_backbone
from featkit.config import Config
from featkit.data.manifest import Collection
from featkit.errors import FeatkitError
from featkit.extract import ExtractSettings, ExtractSummary, extract
from featkit.store import FeatureStore

# Variant loaders: a variant name prefix (e.g. "finetuned-") -> fn(config, backbone, variant) -> Backbone.
_VARIANT_LOADERS: dict[str, Callable[[Config, str, str], Backbone]] = {}


def register_variant_loader(prefix: str, loader: Callable[[Config, str, str], Backbone]) -> None:
    if prefix in _VARIANT_LOADERS:
        raise ValueError(f"variant loader {prefix!r} is already registered")
    _VARIANT_LOADERS[prefix] = loader


def load_backbone(config: Config, backbone: str, *, weights: str | None = None, variant: str | None = None) -> Backbone:
    """The backbone for ``variant``: a weights tag, or a registered kind such as finetuned-<run>."""
    if variant:
        if variant.startswith("finetuned-") and "finetuned-" not in _VARIANT_LOADERS:
            import featkit.finetune  # noqa: F401  (registers its variant loader on import)
        for prefix, loader in _VARIANT_LOADERS.items():
            if variant.startswith(prefix):
                return loader(config, backbone, variant)
        if variant.startswith("finetuned-"):
            raise FeatkitError(f"variant {variant!r} needs featkit's finetune module, which is not available")
    return create_backbone(backbone, weights=weights)


def extract_collection(config: Config, collection: Collection, backbone: str, *, weights: str | None = None,
                       variant: str | None = None, settings: ExtractSettings = ExtractSettings()) -> ExtractSummary:
    net = load_backbone(config, backbone, weights=weights, variant=variant)
    return extract(collection, net, store=FeatureStore(config.store_path), variant=variant, settings=settings)
