"""Preprocessing that travels with a backbone's weights (timm's PretrainedCfg idea).

Importing this module imports no torch: the registry describes backbones (and the CLI
checks names) without loading the deep-learning stack; the transforms import it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize_size``, centre-crop ``crop_size``, normalise.

    Decoding and resizing give uint8 tensors (cheap to pass between workers);
    :meth:`normalize` turns a batch into the float input the network expects.
    """

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(
            crop_size=int(data["crop_size"]),
            resize_size=int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=str(data["interpolation"]),
        )

    def at_crop_size(self, crop_size: int | None) -> "Preprocess":
        """This preprocessing at another crop size; the resize keeps the weights' resize/crop ratio."""
        if crop_size is None or crop_size == self.crop_size:
            return self
        resize = int(math.floor(crop_size * self.resize_size / self.crop_size + 0.5))
        return Preprocess(crop_size=crop_size, resize_size=resize, mean=self.mean, std=self.std,
                          interpolation=self.interpolation)

    @property
    def fingerprint(self) -> str:
        """A short stable hash; stores refuse to mix rows with different fingerprints."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def image_transform(self):
        """PIL image -> uint8 tensor (3, crop, crop) (a torchvision ``v2.Compose``)."""
        from torchvision.transforms import InterpolationMode, v2

        return v2.Compose(
            [
                v2.Resize(self.resize_size, interpolation=InterpolationMode(self.interpolation), antialias=True),
                v2.CenterCrop(self.crop_size),
                v2.PILToTensor(),
            ]
        )

    def normalize(self, batch: "torch.Tensor", dtype: "torch.dtype | None" = None) -> "torch.Tensor":
        """uint8 (B, 3, H, W) -> normalised float (float32 unless ``dtype``) on the batch's device.

        ``batch`` is not modified.
        """
        import torch

        mean = torch.tensor(self.mean, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        scale = 1.0 / (torch.tensor(self.std, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        x = batch.to(torch.float32, copy=True)
        return x.sub_(mean).mul_(scale).to(dtype or torch.float32)  # in place: one new tensor, not three
