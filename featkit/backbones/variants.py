"""Variants: which network (and which store group) a backbone name plus a variant string means.

A store group is ``<backbone>/<variant>`` (:func:`store_key`). The variant names the
network's weights and how images were seen:

* a weights tag (``imagenet1k_v2``) or ``random`` — the registry's networks;
* a registered kind, e.g. ``finetuned-<run>`` — a fine-tuned trunk of this collection
  (loaders are registered by dotted path and imported only when used, so this module
  never imports the fine-tuning code);
* ``<variant>-<N>px`` — the same weights with their preprocessing at crop size N (the
  resize keeps the weights' resize/crop ratio);
* ``<variant>+tta-<mode>`` — rows averaged over test-time views (:mod:`featkit.extract.tta`);
  the network is the base variant's, the views are the extractor's business;
* any other name labels rows of the chosen weights (``weights``, else the default), e.g.
  to keep rows made at another precision apart from the default group.

Everything that turns a variant string into a network or a key goes through here.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from featkit.backbones.registry import RANDOM, parse_name
from featkit.errors import FeatkitError
from featkit.paths import safe_name
from featkit.registry import Registry

if TYPE_CHECKING:
    from featkit.backbones.model import Backbone
    from featkit.config import Config

TTA_SEPARATOR = "+tta-"
# A variant's segment folder percent-encodes it (3 characters per byte at worst) beside a TTA suffix
# of up to 16: 78 bytes keep that name under 255 and hold finetuned-<64-byte run name>.
_VARIANT_BYTES = 78
_SIZE = re.compile(r"^(?P<base>.+)-(?P<size>\d{2,4})px$")

@dataclass(frozen=True)
class VariantKind:
    """Variants named ``<prefix>...``: how to load their network, and which images it was trained on.

    Both are callables or ``"module:function"`` strings, imported when first used:
    ``load(arch, variant, *, config) -> Backbone`` and ``trained_on(variant, *, config) -> ids``
    (images the network learned from: they can never be scored as held out).
    """

    prefix: str
    load: str | Callable
    trained_on: str | Callable | None = None


_KINDS: Registry[VariantKind] = Registry("variant kind")


def register_variant_kind(kind: VariantKind) -> VariantKind:
    return _KINDS.register(kind.prefix, kind)


def _resolve(target: str | Callable) -> Callable:
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target


register_variant_kind(VariantKind("finetuned-", load="featkit.finetune.variant:load_finetuned_backbone",
                                  trained_on="featkit.finetune.variant:trunk_training_ids"))


def store_key(backbone: str, variant: str) -> str:
    """The store group of ``backbone`` (an architecture name, any ``.tag`` dropped) and ``variant``."""
    return f"{backbone.split('.', 1)[0]}/{variant}"


def split_tta(variant: str) -> tuple[str, str]:
    """``imagenet1k_v1+tta-hflip`` -> (``imagenet1k_v1``, ``hflip``); no suffix -> (variant, ``none``)."""
    base, sep, mode = variant.partition(TTA_SEPARATOR)
    return (base, mode) if sep else (variant, "none")


def with_tta(variant: str, tta: str) -> str:
    """The variant of rows made with TTA mode ``tta`` (unchanged for ``none``)."""
    return variant if tta == "none" else f"{variant}{TTA_SEPARATOR}{tta}"


def kind_of(variant: str) -> VariantKind | None:
    """The registered kind ``variant`` belongs to (e.g. ``finetuned-``), or None."""
    base = split_tta(variant)[0]
    return next((_KINDS.get(prefix) for prefix in _KINDS if base.startswith(prefix)), None)


def trained_ids(variant: str, *, config: "Config | None") -> np.ndarray | None:
    """Ids of the images the network of ``variant`` was trained on (None: an ImageNet network, none of them)."""
    kind = kind_of(variant)
    if kind is None or kind.trained_on is None:
        return None
    if config is None:
        raise FeatkitError(f"variant {variant!r} belongs to a collection: open the collection (featkit.open)")
    return np.asarray(_resolve(kind.trained_on)(split_tta(variant)[0], config=config), dtype=str)


def load_backbone(name: str, *, weights: str | None = None, variant: str | None = None,
                  config: "Config | None" = None, seed: int = 0) -> "Backbone":
    """The network of ``name`` for ``variant`` (default: the ``weights`` tag, else the backbone's default).

    A TTA suffix is ignored here (the same network sees every view). Kinds such as
    ``finetuned-<run>`` need the collection's ``config`` (where its runs live).
    """
    from featkit.backbones.registry import create_backbone

    if not variant:
        return create_backbone(name, weights=weights, seed=seed)
    safe_name(variant, what="variant", max_bytes=_VARIANT_BYTES)  # it names a store group and a folder
    base = split_tta(variant)[0]
    sized = _SIZE.match(base)
    if sized:
        net = load_backbone(name, weights=weights, variant=sized["base"], config=config, seed=seed)
        net.preprocess = net.preprocess.at_crop_size(int(sized["size"]))
        net.variant = base
        return net
    kind = kind_of(base)
    if kind is not None:
        if config is None:
            raise FeatkitError(f"variant {base!r} belongs to a collection: open the collection (featkit.open) or "
                               "run the command in its folder")
        return _resolve(kind.load)(name.split(".", 1)[0], base, config=config)
    spec, _ = parse_name(name)
    if base == RANDOM or base in spec.weights:
        if weights and weights.lower() != base:
            raise FeatkitError(f"variant {base!r} names weights, but weights {weights!r} were asked for; give one")
        return create_backbone(name.split(".", 1)[0], weights=base, seed=seed)
    net = create_backbone(name, weights=weights, seed=seed)  # a name for rows of these weights
    net.variant = base
    return net
