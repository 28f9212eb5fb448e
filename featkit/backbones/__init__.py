"""Backbones: one registry of ImageNet networks that return pooled embeddings."""

from featkit.backbones.preprocess import Preprocess
from featkit.backbones.registry import (
    RANDOM,
    Backbone,
    BackboneSpec,
    WeightsSpec,
    create_backbone,
    describe_backbones,
    get_backbone_spec,
    list_backbones,
    register_backbone,
)

__all__ = [
    "RANDOM", "Backbone", "BackboneSpec", "Preprocess", "WeightsSpec", "create_backbone",
    "describe_backbones", "get_backbone_spec", "list_backbones", "register_backbone",
]
