"""The variant ``finetuned-<run>``: a fine-tuned trunk loaded as a Backbone for extraction.

``featkit extract --backbone mobilenet_v2 --variant finetuned-<run>`` caches its
embeddings beside the frozen ones; the store records the trunk file's sha256 and the
preprocessing it was trained with, so rows of two different fine-tunings never mix.
"""

from __future__ import annotations

from featkit.backbones import Preprocess, create_backbone
from featkit.backbones.model import Backbone
from featkit.backbones.weights import file_sha256
from featkit.config import Config
from featkit.errors import FeatkitError
from featkit.finetune.runs import VARIANT_PREFIX, list_runs, load_checkpoint, run_paths
from featkit.paths import is_safe


def load_finetuned_backbone(arch: str, variant: str, *, config: Config) -> Backbone:
    """The trunk saved by run ``variant[len("finetuned-"):]``, with its preprocessing and sha256."""
    run = variant[len(VARIANT_PREFIX):]
    paths = run_paths(config, run) if is_safe(run) else None
    if paths is None or not paths.trunk.is_file():
        finished = [r for r in list_runs(config) if run_paths(config, r).trunk.is_file()]
        raise FeatkitError(
            f"no fine-tuned trunk for variant {variant!r} in {config.finetune_dir}; run `featkit finetune` first. "
            f"Variants there: {', '.join(VARIANT_PREFIX + r for r in finished) or '(none)'}"
        )
    state = load_checkpoint(paths.trunk)
    if state.get("backbone") != arch:
        raise FeatkitError(f"variant {variant!r} is a fine-tuned {state.get('backbone')}, not {arch}; "
                           f"use --backbone {state.get('backbone')}")
    net = create_backbone(arch, weights="random")  # the architecture; every weight is replaced below
    try:
        net.model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise FeatkitError(f"{paths.trunk} does not fit {arch}: {str(err).splitlines()[0]}") from None
    net.weights = net.variant = variant
    net.weights_sha256 = file_sha256(paths.trunk)
    net.preprocess = Preprocess.from_dict(state["preprocess"])
    return net.eval()


def trunk_training_ids(variant: str, *, config: Config) -> list[str]:
    """Images run ``variant[len("finetuned-"):]`` trained or early-stopped on (its split's train and val rows).

    Its test rows, and images outside its split file (added to the collection later), were never seen
    by the trunk: only those can be scored as held out with its features.
    """
    import json

    run = variant[len(VARIANT_PREFIX):]
    path = run_paths(config, run).split if is_safe(run) else None
    if path is None or not path.is_file():
        raise FeatkitError(f"no split file for fine-tuning run {run!r} ({path}); without it featkit cannot tell "
                           "which images the trunk trained on, so it will not evaluate on its features")
    try:
        split = json.loads(path.read_text())
        return [*split["train"], *split["val"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FeatkitError(f"cannot read the split of fine-tuning run {run!r} ({path}): {err}") from None
