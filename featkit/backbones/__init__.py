"""Backbones: one registry of ImageNet networks that return pooled embeddings.

The built-ins are registered on import (as timm registers its models), and importing
this package loads no torch: the network class and the variant loaders come with
:func:`create_backbone` / :func:`load_backbone`.
"""

from featkit.backbones.preprocess import Preprocess
from featkit.backbones.registry import (
    RANDOM,
    BackboneSpec,
    LazyWeights,
    WeightsSpec,
    check_backbone_name,
    create_backbone,
    describe_backbones,
    get_backbone_spec,
    list_backbones,
    register_backbone,
)
from featkit.backbones import builtin, efficientnet_lite  # noqa: E402,F401  (register the built-ins)
from featkit.backbones.variants import (VariantKind, load_backbone, register_variant_kind, split_tta,  # noqa: E402
                                       store_key, trained_ids)

__all__ = [
    "RANDOM", "Backbone", "BackboneSpec", "LazyWeights", "Preprocess", "WeightsSpec", "check_backbone_name",
    "create_backbone", "describe_backbones", "get_backbone_spec", "list_backbones", "load_backbone",
    "register_backbone", "register_variant_kind", "split_tta", "store_key", "trained_ids", "VariantKind",
]


def __getattr__(name: str):
    """``Backbone`` (an ``nn.Module``) is imported on first use, with torch."""
    if name == "Backbone":
        from featkit.backbones.model import Backbone

        return Backbone
    raise AttributeError(f"module 'featkit.backbones' has no attribute {name!r}")
