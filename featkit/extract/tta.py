"""Test-time augmentation for extraction: several views per image, one averaged embedding.

A TTA mode says which views of each image the backbone sees:

* ``none`` — the backbone's own resize + centre crop (the default; no extra work);
* ``hflip`` — that view and its horizontal mirror (2 forward passes);
* ``crops`` — five crops (four corners and centre) at the backbone's crop size from the
  slightly larger ``resize_size`` square (e.g. 224 from 256), as in the ten-crop test
  protocol of the ImageNet papers (5 passes);
* ``hflip+crops`` — the five crops and their mirrors (10 passes).

The pooled pre-logits embeddings of the views are averaged (in float32). Averaged rows
are not the rows of a plain extraction, so they live in their own store variant:
``<weights>+tta-<mode>`` (e.g. ``mobilenet_v2/imagenet1k_v1+tta-hflip``).

Modes are a registry (``register_tta`` / ``list_tta`` / ``create_tta``) that imports no
torch (the CLI checks ``--tta`` while parsing); the views are made with torch when used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from featkit.backbones.preprocess import Preprocess
from featkit.backbones.variants import with_tta
from featkit.registry import Registry

if TYPE_CHECKING:
    import torch

NONE = "none"


@dataclass(frozen=True)
class TTA:
    """Which views of an image are embedded and averaged."""

    name: str
    flip: bool = False
    crops: bool = False  # five crops at crop_size from the resize_size square

    @property
    def n_views(self) -> int:
        return (5 if self.crops else 1) * (2 if self.flip else 1)

    def variant(self, variant: str) -> str:
        """The store variant for rows made with this mode (unchanged for ``none``)."""
        return with_tta(variant, self.name)

    def input_size(self, pre: Preprocess) -> int:
        """Side of the square uint8 image the decoder hands over."""
        return max(pre.resize_size, pre.crop_size) if self.crops else pre.crop_size

    def image_transform(self, pre: Preprocess):
        """PIL image -> uint8 tensor (3, input_size, input_size) (a torchvision ``v2.Compose``)."""
        if not self.crops:
            return pre.image_transform()
        from torchvision.transforms import InterpolationMode, v2

        return v2.Compose([
            v2.Resize(pre.resize_size, interpolation=InterpolationMode(pre.interpolation), antialias=True),
            v2.CenterCrop(self.input_size(pre)),
            v2.PILToTensor(),
        ])

    def views(self, batch: "torch.Tensor", crop_size: int) -> "list[torch.Tensor]":
        """(B, 3, S, S) -> the views, each (B, 3, crop_size, crop_size)."""
        import torch
        from torchvision.transforms.v2 import functional as F

        base = list(F.five_crop(batch, [crop_size, crop_size])) if self.crops else [batch]
        return base + [torch.flip(v, dims=[-1]) for v in base] if self.flip else base

    def embed(self, model: "torch.nn.Module", x: "torch.Tensor", crop_size: int, *,
              channels_last: bool = False) -> "torch.Tensor":
        """The float32 mean of ``model`` over the views of normalised batch ``x``."""
        import torch

        total = None
        for view in self.views(x, crop_size):
            if channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            out = model(view).float()
            total = out if total is None else total + out
        return total / self.n_views


_REGISTRY: Registry[TTA] = Registry("TTA mode")


def register_tta(tta: TTA) -> TTA:
    return _REGISTRY.register(tta.name, tta)


def list_tta() -> list[str]:
    return _REGISTRY.names()


def create_tta(name: str) -> TTA:
    return _REGISTRY.get(name)


register_tta(TTA(NONE))
register_tta(TTA("hflip", flip=True))
register_tta(TTA("crops", crops=True))
register_tta(TTA("hflip+crops", flip=True, crops=True))
