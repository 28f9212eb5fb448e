"""Per-task heads over cached embeddings: sklearn/imblearn pipelines from one registry.

A leaf of the library: the registry and its built-ins (registered on import, as timm
registers its models), importing no sklearn until a head is built. Evaluation lives in
:mod:`featkit.evaluate`, fitting a task in :mod:`featkit.fit`, saved models in
:mod:`featkit.modelio`.
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
    parse_params,
    rebalance_choices,
    register_head,
    register_sampler,
    resolve_rebalance,
)
from featkit.heads import builtin  # noqa: E402,F401  (registers logreg, linsvc, lgbm and the samplers)

__all__ = [
    "AUTO", "CLASS_WEIGHT", "NONE", "HeadSpec", "create_head", "create_sampler", "get_head_spec", "list_heads",
    "list_samplers", "parse_params", "rebalance_choices", "register_head", "register_sampler", "resolve_rebalance",
]
