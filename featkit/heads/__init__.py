"""Per-task heads over cached embeddings: sklearn/imblearn pipelines from one registry.

Evaluation (splits, tuning, metrics) lives in :mod:`featkit.evaluate`, saved models
in :mod:`featkit.modelio`, prediction on new images in :mod:`featkit.predict`.
"""

from featkit.heads.registry import (
    AUTO,
    CLASS_WEIGHT,
    NONE,
    HeadSpec,
    create_head,
    create_sampler,
    get_head_spec,
    list_heads,
    list_samplers,
    make_head,
    rebalance_choices,
    register_head,
    register_sampler,
    resolve_rebalance,
)

__all__ = [
    "AUTO", "CLASS_WEIGHT", "NONE", "HeadSpec", "create_head", "create_sampler", "get_head_spec", "list_heads",
    "list_samplers", "make_head", "rebalance_choices", "register_head", "register_sampler", "resolve_rebalance",
]
