"""A trunk cut into blocks, input to output, so ``--train-blocks K`` trains only the last K.

Each architecture family has its own cut (ResNet stages, MobileNet/EfficientNet
inverted-residual blocks, ViT encoder layers, ...), registered by name pattern with
:func:`register_blocks`; an unknown family falls back to the model's parametrised
children. Frozen blocks keep their BatchNorm statistics (held in eval mode), as in
ULMFiT-style gradual unfreezing, where one more block thaws every few epochs.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterator, Union

from torch import nn

from featkit.backbones import Backbone
from featkit.errors import FeatkitError

Block = list[Union[nn.Module, nn.Parameter]]
Splitter = Callable[[nn.Module], list[Block]]

_SPLITTERS: list[tuple[str, Splitter]] = []


def register_blocks(pattern: str) -> Callable[[Splitter], Splitter]:
    """Register how to cut backbones whose name matches ``pattern`` (fnmatch)."""

    def deco(fn: Splitter) -> Splitter:
        if any(p == pattern for p, _ in _SPLITTERS):
            raise ValueError(f"block splitter for {pattern!r} is already registered")
        _SPLITTERS.append((pattern, fn))
        return fn

    return deco


def list_block_patterns() -> list[str]:
    return [pattern for pattern, _ in _SPLITTERS]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _param_children(module: nn.Module) -> list[Block]:
    return [[child] for child in module.children() if _has_params(child)]


@register_blocks("resnet*")
def _resnet(model: nn.Module) -> list[Block]:
    return [[model.conv1, model.bn1], [model.layer1], [model.layer2], [model.layer3], [model.layer4]]


def _features_then_classifier(model: nn.Module) -> list[Block]:
    blocks = _param_children(model.features)
    # what is left of the classifier belongs to the trunk: mobilenet_v3's 1280-d layer, convnext's norm, vgg's fc
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential):
        blocks += _param_children(classifier)
    elif isinstance(classifier, nn.Module) and _has_params(classifier):
        blocks.append([classifier])
    return blocks


for _pattern in ("mobilenet_v*", "efficientnet_b*", "densenet*", "convnext*", "vgg*"):
    register_blocks(_pattern)(_features_then_classifier)


@register_blocks("vit_*")
def _vit(model: nn.Module) -> list[Block]:
    stem: Block = [model.conv_proj, model.class_token, model.encoder.pos_embedding]
    return [stem, *([layer] for layer in model.encoder.layers), [model.encoder.ln]]


@register_blocks("efficientnet_lite*")
def _efficientnet_lite(model: nn.Module) -> list[Block]:
    return [[model._conv_stem, model._bn0], *([b] for b in model._blocks), [model._conv_head, model._bn1]]


def trunk_blocks(backbone: Backbone) -> list[Block]:
    """The trunk's blocks, input first; every trunk parameter is in exactly one."""
    model = backbone.model
    splitter = next((fn for pattern, fn in _SPLITTERS if fnmatch.fnmatch(backbone.name, pattern)), _param_children)
    blocks = splitter(model)
    seen: dict[int, int] = {}
    for block in blocks:
        for p in block_parameters(block):
            seen[id(p)] = seen.get(id(p), 0) + 1
    every = {id(p) for p in model.parameters()}
    if set(seen) != every or any(n > 1 for n in seen.values()):
        raise FeatkitError(f"cannot cut {backbone.name} into blocks cleanly; register a splitter for it "
                           "with featkit.finetune.blocks.register_blocks")
    return blocks


def block_parameters(block: Block) -> Iterator[nn.Parameter]:
    for part in block:
        if isinstance(part, nn.Parameter):
            yield part
        else:
            yield from part.parameters()


def trainable_count(n_blocks: int, train_blocks: int | None, unfreeze_every: int, epoch: int) -> int:
    """How many of the last blocks train at ``epoch`` (0-based)."""
    start = n_blocks if train_blocks is None else train_blocks
    if unfreeze_every > 0:
        start += epoch // unfreeze_every
    return min(n_blocks, start)


def set_trainable(blocks: list[Block], count: int) -> None:
    """Train the last ``count`` blocks; freeze the rest (weights and BatchNorm statistics)."""
    first = len(blocks) - count
    for i, block in enumerate(blocks):
        train = i >= first
        for p in block_parameters(block):
            p.requires_grad_(train)


def freeze_batchnorm_stats(blocks: list[Block], count: int) -> None:
    """Call after ``model.train()``: frozen blocks keep using their running statistics."""
    for block in blocks[: len(blocks) - count]:
        for part in block:
            if isinstance(part, nn.Module):
                part.eval()
