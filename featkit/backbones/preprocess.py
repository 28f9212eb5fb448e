"""Preprocessing that travels with a backbone's weights (timm's PretrainedCfg idea)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

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

    @property
    def fingerprint(self) -> str:
        """A short stable hash; stores refuse to mix rows with different fingerprints."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def image_transform(self) -> v2.Compose:
        """PIL image -> uint8 tensor (3, crop, crop)."""
        return v2.Compose(
            [
                v2.Resize(self.resize_size, interpolation=InterpolationMode(self.interpolation), antialias=True),
                v2.CenterCrop(self.crop_size),
                v2.PILToTensor(),
            ]
        )

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised float on the batch's device (``batch`` is not modified)."""
        mean = torch.tensor(self.mean, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        scale = 1.0 / (torch.tensor(self.std, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        x = batch.to(torch.float32, copy=True)
        return x.sub_(mean).mul_(scale).to(dtype)  # in place: one new tensor, not three
