"""The network a registry entry builds: images in, pooled pre-logits embeddings out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from featkit.backbones.preprocess import Preprocess

if TYPE_CHECKING:
    from featkit.backbones.registry import BackboneSpec


class Backbone(nn.Module):
    """A network that maps normalised images (B, 3, H, W) to embeddings (B, dim).

    ``weights`` is the weights tag (or ``random``, or ``finetuned-<run>`` once
    :mod:`featkit.backbones.variants` has loaded a fine-tuned trunk into it); ``variant``
    names the store group below the backbone (the weights tag unless a variant says
    otherwise); ``weights_sha256`` and ``preprocess`` are what makes two stores' rows
    comparable.
    """

    def __init__(self, spec: "BackboneSpec", model: nn.Module, *, weights: str,
                 weights_sha256: str, preprocess: Preprocess) -> None:
        super().__init__()
        self.model = model
        self.name = spec.name
        self.dim = spec.dim
        self.weights = weights
        self.variant = weights
        self.weights_sha256 = weights_sha256
        self.preprocess = preprocess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):  # inception's aux output in train mode
            out = out[0]
        return torch.flatten(out, 1)
