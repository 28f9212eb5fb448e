"""The exact settings of a fine-tuning run: frozen, validated, saved beside the checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from featkit.errors import FeatkitError, choices_message
from featkit.extract.settings import DEVICES, PRECISIONS
from featkit.paths import safe_name, slug

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "step", "constant")
CLASS_WEIGHTS = ("none", "balanced", "effective")  # effective: Cui et al. 2019, effective number of samples
TASK_WEIGHTINGS = ("fixed", "uncertainty")  # uncertainty: Kendall, Gal & Cipolla 2018
AUGMENTATIONS = ("hflip", "rotation", "jitter", "crop", "erasing")

# Fields a resumed run may change: how and where it runs, and how long. Everything else
# (tasks, backbone, optimiser, schedule shape, losses, augmentations) must match.
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "min_delta", "device", "precision", "workers", "progress",
                               "cache_images"})

@dataclass(frozen=True)
class Augment:
    """Training-time augmentations (torchvision.transforms.v2), each switchable.

    A strength of 0 (or False) turns one off; evaluation never augments.
    """

    hflip: bool = True
    rotation: float = 0.0  # max degrees either way
    jitter: float = 0.2  # brightness/contrast/saturation strength (hue gets a quarter of it)
    crop: bool = True  # RandomResizedCrop instead of the centre crop
    crop_scale: tuple[float, float] = (0.5, 1.0)
    erasing: float = 0.0  # probability of RandomErasing per image

    @classmethod
    def from_names(cls, names: "tuple[str, ...] | list[str]") -> "Augment":
        """``("hflip", "rotation")`` -> those on with their usual strengths, the rest off."""
        unknown = [n for n in names if n not in AUGMENTATIONS]
        if unknown:
            raise FeatkitError(choices_message("augmentation", unknown[0], AUGMENTATIONS) + " (or 'none')")
        on = set(names)
        return cls(hflip="hflip" in on, rotation=15.0 if "rotation" in on else 0.0,
                   jitter=0.2 if "jitter" in on else 0.0, crop="crop" in on,
                   erasing=0.25 if "erasing" in on else 0.0)

    @property
    def names(self) -> tuple[str, ...]:
        flags = {"hflip": self.hflip, "rotation": self.rotation > 0, "jitter": self.jitter > 0,
                 "crop": self.crop, "erasing": self.erasing > 0}
        return tuple(name for name in AUGMENTATIONS if flags[name])

    def validate(self) -> None:
        if not 0 <= self.rotation <= 180:
            raise FeatkitError(f"rotation must be between 0 and 180 degrees, got {self.rotation}")
        if not 0 <= self.jitter <= 1:
            raise FeatkitError(f"jitter strength must be between 0 and 1, got {self.jitter}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise FeatkitError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 <= self.erasing <= 1:
            raise FeatkitError(f"erasing probability must be between 0 and 1, got {self.erasing}")


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything that decides what a fine-tuning run learns; saved as settings.json."""

    tasks: tuple[str, ...] = ()
    backbone: str = "mobilenet_v2"
    weights: str | None = None  # a weights tag of the backbone (None: its default)
    run: str | None = None  # None: the tasks joined with '+'
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3  # heads; the trunk gets lr * trunk_lr_scale
    # 0.3: the trunk at 3e-4, as a plain AdamW recipe. At 0.1 (1e-4) the trunk barely moved in a short run:
    # held-out balanced accuracy 0.889 -> 0.949 (porcelain dynasty), 0.586 -> 0.73 (stylised shapes), see
    # benchmarks/README.md "Fine-tuning defaults"
    trunk_lr_scale: float = 0.3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 1
    step_size: int = 10  # step schedule: multiply by gamma every step_size epochs
    gamma: float = 0.1
    train_blocks: int | None = None  # train only the last K trunk blocks (0: heads only; None: all)
    unfreeze_every: int = 0  # gradual unfreezing: one more block every N epochs (0: off)
    dropout: float = 0.2
    class_weights: str = "none"
    task_weighting: str = "fixed"
    task_weights: tuple[tuple[str, float], ...] = ()  # per-task loss multipliers; unnamed tasks get 1
    label_smoothing: float = 0.0
    cascade: tuple[tuple[str, str], ...] = ()  # (parent, child): parent's probabilities feed the child head
    augment: Augment = field(default_factory=Augment)
    image_size: int | None = None  # crop size (None: the backbone's); resize keeps the weights' ratio
    patience: int = 5  # epochs without a better validation mean balanced accuracy (0: never stop early)
    min_delta: float = 0.0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None  # None: auto
    cache_images: bool | None = None  # keep decoded images in memory (None: when they fit in ~2 GiB)
    steps_per_epoch: int | None = None  # cap on batches per epoch (quick experiments)
    progress: bool = True

    @property
    def run_name(self) -> str:
        return self.run or slug("+".join(self.tasks))  # task names are data: made a safe folder name

    def task_weight(self, task: str) -> float:
        return dict(self.task_weights).get(task, 1.0)

    def replace(self, **changes) -> "FinetuneSettings":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Checks that need no data; task names are checked against the collection later."""
        if not self.tasks:
            raise FeatkitError("no tasks to fine-tune; pass --tasks a,b (columns of the manifest)")
        if len(set(self.tasks)) != len(self.tasks):
            raise FeatkitError(f"tasks repeat: {', '.join(self.tasks)}")
        safe_name(self.run_name, what="fine-tuning run name (--run)")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "step_size": self.step_size}
        for name, value in positive.items():
            if value <= 0:
                raise FeatkitError(f"{name} must be positive, got {value}")
        if self.optimizer not in OPTIMIZERS:
            raise FeatkitError(choices_message("optimizer", self.optimizer, OPTIMIZERS))
        if self.schedule not in SCHEDULES:
            raise FeatkitError(choices_message("schedule", self.schedule, SCHEDULES))
        if self.class_weights not in CLASS_WEIGHTS:
            raise FeatkitError(choices_message("class weighting", self.class_weights, CLASS_WEIGHTS))
        if self.task_weighting not in TASK_WEIGHTINGS:
            raise FeatkitError(choices_message("task weighting", self.task_weighting, TASK_WEIGHTINGS))
        if self.precision not in PRECISIONS:
            raise FeatkitError(choices_message("precision", self.precision, PRECISIONS))
        if self.device.split(":")[0] not in DEVICES:
            raise FeatkitError(choices_message("device", self.device, DEVICES))
        ranges = {"dropout": (self.dropout, 0, 0.95), "label_smoothing": (self.label_smoothing, 0, 0.5),
                  "val_fraction": (self.val_fraction, 0.01, 0.5), "test_fraction": (self.test_fraction, 0.01, 0.5),
                  "trunk_lr_scale": (self.trunk_lr_scale, 0, 10), "gamma": (self.gamma, 0, 1)}
        for name, (value, lo, hi) in ranges.items():
            if not lo <= value <= hi:
                raise FeatkitError(f"{name} must be between {lo} and {hi}, got {value}")
        non_negative = {"weight_decay": self.weight_decay, "warmup_epochs": self.warmup_epochs,
                        "unfreeze_every": self.unfreeze_every, "patience": self.patience, "min_delta": self.min_delta}
        for name, value in non_negative.items():
            if value < 0:
                raise FeatkitError(f"{name} must be 0 or more, got {value}")
        if self.train_blocks is not None and self.train_blocks < 0:
            raise FeatkitError(f"train_blocks must be 0 or more (or unset for all), got {self.train_blocks}")
        if self.image_size is not None and self.image_size < 32:
            raise FeatkitError(f"image size must be at least 32 pixels, got {self.image_size}")
        if self.workers is not None and self.workers < 0:
            raise FeatkitError(f"workers must be 0 or more, got {self.workers}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise FeatkitError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        for task, weight in self.task_weights:
            if task not in self.tasks:
                raise FeatkitError(choices_message("task in task weights", task, self.tasks))
            if weight < 0:
                raise FeatkitError(f"task weight for {task!r} must be 0 or more, got {weight}")
        self._validate_cascade()
        self.augment.validate()

    def _validate_cascade(self) -> None:
        children = [child for _, child in self.cascade]
        for parent, child in self.cascade:
            for name in (parent, child):
                if name not in self.tasks:
                    raise FeatkitError(
                        f"--cascade {parent}:{child} names {name!r}, which is not among the tasks being trained; "
                        f"valid choices: {', '.join(self.tasks)}"
                    )
            if parent == child:
                raise FeatkitError(f"--cascade {parent}:{child}: a task cannot feed itself")
        repeated = sorted({c for c in children if children.count(c) > 1})
        if repeated:
            raise FeatkitError(f"--cascade gives {repeated[0]!r} more than one parent; each child has one")
        cascade_order(self.tasks, self.cascade)  # raises on a cycle

    # -- JSON round trip -------------------------------------------------------------
    def to_dict(self) -> dict:
        out = asdict(self)
        out["task_weights"] = dict(self.task_weights)
        out["cascade"] = [f"{p}:{c}" for p, c in self.cascade]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        aug = dict(data.get("augment") or {})
        if "crop_scale" in aug:
            aug["crop_scale"] = tuple(aug["crop_scale"])
        data["augment"] = Augment(**aug)
        data["tasks"] = tuple(data.get("tasks", ()))
        data["task_weights"] = tuple((k, float(v)) for k, v in dict(data.get("task_weights") or {}).items())
        data["cascade"] = tuple(parse_cascade(data.get("cascade") or ()))
        return cls(**data)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> "FinetuneSettings":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise FeatkitError(f"cannot read fine-tuning settings {path}: {err}") from None

    def differences(self, other: "FinetuneSettings") -> dict[str, tuple]:
        """Fields whose values differ: name -> (self's, other's)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


def parse_cascade(items) -> list[tuple[str, str]]:
    """``["period:glaze"]`` (or pairs) -> ``[("period", "glaze")]``."""
    out = []
    for item in items:
        if isinstance(item, str):
            parent, sep, child = item.partition(":")
            if not sep or not parent or not child:
                raise FeatkitError(f"--cascade {item!r} must be parent:child (two task names)")
            out.append((parent.strip(), child.strip()))
        else:
            parent, child = item
            out.append((str(parent), str(child)))
    return out


def parse_task_weights(text: str | None) -> tuple[tuple[str, float], ...]:
    """``"glaze=2,ware=0.5"`` -> ``(("glaze", 2.0), ("ware", 0.5))``."""
    if not text:
        return ()
    out = []
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            weight = float(value) if sep and name.strip() else None
        except ValueError:
            weight = None
        if weight is None:
            raise FeatkitError(f"task weight {item!r} must be task=number, e.g. glaze=2")
        out.append((name.strip(), weight))
    return tuple(out)


def cascade_order(tasks: tuple[str, ...], cascade: tuple[tuple[str, str], ...]) -> list[str]:
    """Tasks ordered so every parent comes before its child; a cycle is an error."""
    parent_of = {child: parent for parent, child in cascade}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(task: str) -> None:
        if task in order:
            return
        if task in visiting:
            raise FeatkitError(f"--cascade forms a cycle through {task!r}; parents must nest, e.g. period:glaze")
        visiting.add(task)
        if task in parent_of:
            visit(parent_of[task])
        visiting.discard(task)
        order.append(task)

    for task in tasks:
        visit(task)
    return order
