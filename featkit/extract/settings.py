"""How to run extraction: one frozen dataclass, every field a CLI flag; imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from featkit.data.images import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS
from featkit.errors import FeatkitError, choices_message
from featkit.extract.engines import list_engines
from featkit.extract.tta import create_tta

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
STORAGE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExtractSettings:
    """How to run extraction; every field has a CLI flag."""

    batch_size: int = 32
    workers: int | None = None  # None: auto (cores on CPU, more on GPU)
    device: str = "auto"
    precision: str = "auto"
    limit: int | None = None
    retry_failed: bool = False
    channels_last: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT  # long side / short side; beyond it an image is a recorded failure
    storage_dtype: str = "float32"
    progress: bool = True
    checkpoint_seconds: float = 300.0
    engine: str = "local"  # a registered engine (featkit.extract.engines)
    address: str | None = None  # Ray cluster address (None: start a local one)
    tta: str = "none"  # featkit.extract.tta mode; rows go to variant "<weights>+tta-<mode>"
    compile: bool = False  # torch.compile the backbone
    gpu_decode: bool | None = None  # featkit.extract.gpu nvjpeg path; None: on when extracting on CUDA

    def validate(self) -> None:
        if self.batch_size < 1:
            raise FeatkitError(f"batch size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise FeatkitError(f"workers must be 0 or more, got {self.workers}")
        if self.precision not in PRECISIONS:
            raise FeatkitError(choices_message("precision", self.precision, PRECISIONS))
        if self.device.split(":")[0] not in DEVICES:
            raise FeatkitError(choices_message("device", self.device, DEVICES))
        if self.limit is not None and self.limit < 0:
            raise FeatkitError(f"limit must be 0 or more, got {self.limit}")
        if self.max_aspect < 1:
            raise FeatkitError(f"max aspect must be at least 1 (a square), got {self.max_aspect}")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise FeatkitError(choices_message("storage dtype", self.storage_dtype, STORAGE_DTYPES))
        if self.engine not in list_engines():
            raise FeatkitError(choices_message("engine", self.engine, list_engines()))
        if self.address and self.engine != "ray":
            raise FeatkitError(f"--address {self.address!r} is for the Ray engine; add --engine ray")
        create_tta(self.tta)
