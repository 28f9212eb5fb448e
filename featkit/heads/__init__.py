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

_RUN = ("FitSettings", "RunResult", "fit_task", "fit_tasks")


def __getattr__(name: str):
    """``fit_task`` & co. live in :mod:`featkit.heads.run` (imported lazily: it needs evaluate and the store)."""
    if name in _RUN:
        from featkit.heads import run

        return getattr(run, name)
    raise AttributeError(f"module 'featkit.heads' has no attribute {name!r}")


__all__ = [*_RUN, 
    "AUTO", "CLASS_WEIGHT", "NONE", "HeadSpec", "create_head", "create_sampler", "get_head_spec", "list_heads",
    "list_samplers", "make_head", "rebalance_choices", "register_head", "register_sampler", "resolve_rebalance",
]
