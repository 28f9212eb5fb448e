"""The head registry: ``register_head`` / ``list_heads`` / ``create_head`` (and samplers).

A head is an imbalanced-learn :class:`~imblearn.pipeline.Pipeline` over cached
embeddings::

    scale (StandardScaler) → pca (optional) → sampler (optional) → clf

Samplers sit inside the pipeline, so they run on training folds only and never
touch validation or test rows (imblearn skips them at predict time). Each head's
spec says which hyperparameters are chosen inside the training data (``grid``) and
how (``tuning``: inner cross-validation, or early stopping on a validation split).

The registry imports no sklearn: names and hyperparameter grids are plain data (the
CLI checks ``--clf`` and ``--rebalance`` while parsing), and pipelines are built by
:func:`create_head`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from featkit.errors import FeatkitError, choices_message
from featkit.registry import Registry

if TYPE_CHECKING:
    from imblearn.pipeline import Pipeline
    from sklearn.base import BaseEstimator

NONE = "none"
AUTO = "auto"
CLASS_WEIGHT = "class_weight"
TUNINGS = ("grid", "early_stopping")
# How probabilities are calibrated out of fold: auto chooses among the others by ECE (featkit.heads.calibration)
CALIBRATIONS = ("auto", "none", "temperature", "sigmoid", "isotonic")


@dataclass(frozen=True)
class HeadSpec:
    """What the registry knows about a head without building it."""

    name: str
    description: str
    build: Callable[..., "BaseEstimator"]  # (params, *, class_weight, seed, n_jobs: int | None) -> classifier
    defaults: dict[str, Any] = field(default_factory=dict)  # hyperparameters when neither grid nor user set them
    grid: dict[str, tuple] = field(default_factory=dict)  # chosen inside training data unless the user fixes them
    tuning: str = "grid"  # "grid": inner CV over ``grid``; "early_stopping": validation split picks rounds
    path: str | None = None  # a grid hyperparameter searched in rising order with warm starts, its grid grown
    path_limits: tuple[float, float] = (1e-6, 1e3)  # ... by factors of 10 at an edge, never beyond these
    base_calibration: str = "none"  # its probabilities before any choice: "none" (its own predict_proba) or a method
    param_prefix: str = "clf__"  # where hyperparameters live in the pipeline
    class_weight: bool = True  # the classifier takes class_weight="balanced"
    default_pca: int | None = None  # components used when --pca is not given and the embedding is wider
    auto_rebalance: str = CLASS_WEIGHT  # what --rebalance auto picks for an imbalanced task

    def param_names(self) -> set[str]:
        return set(self.defaults) | set(self.grid)


_HEADS: Registry[HeadSpec] = Registry("head")
_SAMPLERS: Registry[Callable[..., "BaseEstimator"]] = Registry("sampler")


def register_head(spec: HeadSpec) -> HeadSpec:
    if spec.tuning not in TUNINGS:
        raise ValueError(choices_message("tuning", spec.tuning, TUNINGS))
    return _HEADS.register(spec.name, spec)


def register_sampler(name: str, factory: Callable[..., "BaseEstimator"]) -> None:
    """``factory(*, seed, smallest_class) -> imblearn sampler``."""
    if name in (NONE, AUTO, CLASS_WEIGHT):
        raise ValueError(f"sampler {name!r} is already registered")
    _SAMPLERS.register(name, factory)


def list_heads(pattern: str = "*") -> list[str]:
    """Registered head names matching ``pattern`` (fnmatch)."""
    return sorted(_HEADS.names(pattern))


def list_samplers() -> list[str]:
    return sorted(_SAMPLERS.names())


def rebalance_choices() -> list[str]:
    """Every value ``--rebalance`` accepts."""
    return [AUTO, NONE, CLASS_WEIGHT, *list_samplers()]


def get_head_spec(name: str) -> HeadSpec:
    return _HEADS.get(name)


def create_sampler(name: str, *, seed: int = 0, smallest_class: int | None = None) -> "BaseEstimator":
    return _SAMPLERS.get(name)(seed=seed, smallest_class=smallest_class)


def resolve_rebalance(name: str, rebalance: str, class_counts: dict[str, int] | None = None) -> tuple[str, str]:
    """``rebalance`` with ``auto`` replaced by a concrete choice, and why it was chosen."""
    spec = get_head_spec(name)
    if rebalance not in rebalance_choices():
        raise FeatkitError(choices_message("rebalance", rebalance, rebalance_choices()))
    if rebalance == CLASS_WEIGHT and not spec.class_weight:
        raise FeatkitError(f"head {name!r} takes no class weights; use --rebalance oversample, smote or undersample")
    if rebalance != AUTO:
        return rebalance, "as requested"
    if not class_counts:
        return spec.auto_rebalance, f"class counts unknown; {name} default"
    biggest = max(class_counts, key=class_counts.get)
    smallest = min(class_counts, key=class_counts.get)
    ratio = class_counts[biggest] / max(1, class_counts[smallest])
    if ratio < 1.5:
        return NONE, f"classes nearly balanced ({biggest} {class_counts[biggest]} vs {smallest} {class_counts[smallest]})"
    how = "weights classes by inverse frequency, no synthetic rows" if spec.auto_rebalance == CLASS_WEIGHT else ""
    return spec.auto_rebalance, (
        f"imbalance ratio {ratio:.1f} ({biggest} {class_counts[biggest]} vs {smallest} {class_counts[smallest]}); "
        f"{spec.auto_rebalance} for {name}{': ' + how if how else ''}"
    )


def create_head(
    name: str,
    *,
    n_classes: int,
    rebalance: str = NONE,
    pca: int | None = None,
    params: dict[str, Any] | None = None,
    class_counts: dict[str, int] | None = None,
    seed: int = 0,
    n_jobs: int | None = None,
) -> "Pipeline":
    """An unfitted pipeline for head ``name``.

    ``params`` are the classifier's hyperparameters by their short names (``C``,
    ``num_leaves``); scalar values only (grids are searched by :mod:`featkit.evaluate`).
    ``rebalance`` ``auto`` is resolved from ``class_counts``.
    """
    from imblearn.pipeline import Pipeline
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    spec = get_head_spec(name)
    if n_classes < 2:
        raise FeatkitError(f"a classifier needs at least 2 classes; this task has {n_classes}")
    if pca is not None and pca < 1:
        raise FeatkitError(f"pca must be a positive number of components (or None), got {pca}")
    params = dict(params or {})
    unknown = set(params) - spec.param_names()
    if unknown:
        raise FeatkitError(
            f"unknown parameter(s) {', '.join(sorted(unknown))} for head {name!r}; "
            f"valid: {', '.join(sorted(spec.param_names()))}"
        )
    chosen, _ = resolve_rebalance(name, rebalance, class_counts)
    # untuned, a searched hyperparameter takes the middle of its grid
    values = {**spec.defaults, **{k: v[len(v) // 2] for k, v in spec.grid.items() if k not in spec.defaults}, **params}
    clf = spec.build(values, class_weight="balanced" if chosen == CLASS_WEIGHT else None, seed=seed, n_jobs=n_jobs)
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    if pca:
        steps.append(("pca", PCA(n_components=pca, random_state=seed)))
    if chosen not in (NONE, CLASS_WEIGHT):
        smallest = min(class_counts.values()) if class_counts else None
        steps.append(("sampler", create_sampler(chosen, seed=seed, smallest_class=smallest)))
    steps.append(("clf", clf))
    return Pipeline(steps)


def parse_params(items: list[str], head: str) -> dict[str, tuple]:
    """``["C=0.1", "num_leaves=7,15,31"]`` -> ``{"C": (0.1,), "num_leaves": (7, 15, 31)}`` for ``head``.

    Each value is parsed as the type of the head's own default (or grid) for that name, so
    ``C=abc`` or ``num_leaves=7.5`` is refused with the name, the value and what it takes.
    """
    spec = get_head_spec(head)
    known = {**{k: v[0] for k, v in spec.grid.items()}, **spec.defaults}
    out: dict[str, tuple] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not parts:
            raise FeatkitError(f"parameter {item!r} is not NAME=VALUE or NAME=V1,V2 (e.g. C=0.1, num_leaves=7,15,31)")
        if name not in known:
            raise FeatkitError(f"unknown parameter {name!r} for head {head!r}; valid: {', '.join(sorted(known))}")
        kind = type(known[name])
        parsed = []
        for text in parts:
            try:
                value = kind(text)
            except ValueError:
                what = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
                raise FeatkitError(f"--param {name}={values}: {name} of head {head!r} takes {what} "
                                   f"(e.g. {name}={known[name]}), got {text!r}") from None
            parsed.append(value)
        out[name] = tuple(parsed)
    return out
