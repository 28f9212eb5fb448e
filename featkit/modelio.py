"""Saving and loading fitted heads safely (skops, never pickle).

A model folder can come from someone else, and unpickling runs arbitrary code. A
featkit model is therefore two files:

* ``model.skops`` — the fitted pipeline in skops' format, which records every type
  it holds; loading refuses any type that is not on :data:`TRUSTED_TYPES` (exactly
  the types featkit's heads are made of) beyond skops' own safe defaults.
* ``model.json`` — what the model needs to be used correctly: task, classes, head,
  the feature space it was fitted in (backbone, variant, weights sha256, preprocessing
  fingerprint, dimension), the featkit version and the sha256 of ``model.skops``.

A folder that lacks either file, whose files disagree, or that was written by
another featkit version is refused with a message that says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featkit._version import __version__
from featkit.errors import FeatkitError
from featkit.paths import RUNS_ELSEWHERE, new_file

MODEL_FILE = "model.skops"
META_FILE = "model.json"
FORMAT = "featkit-head/1"

# Types beyond skops' defaults that featkit heads contain; nothing else is loaded.
TRUSTED_TYPES = (
    "collections.OrderedDict",
    "featkit.heads.svm.PrimalLinearSVC",
    "imblearn.over_sampling._random_over_sampler.RandomOverSampler",
    "imblearn.over_sampling._smote.base.SMOTE",
    "imblearn.pipeline.Pipeline",
    "imblearn.under_sampling._prototype_selection._random_under_sampler.RandomUnderSampler",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.calibration._TemperatureScaling",
    "sklearn.frozen._frozen.FrozenEstimator",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._kd_tree.KDTree",
)
FEATURE_SPACE_KEYS = ("backbone", "variant", "weights", "weights_sha256", "preprocess_fingerprint", "dim")


def probability_column(task: str, label: str) -> str:
    """A class's probability column: the same name in fit's predictions.csv and in predict's output."""
    return f"{task}:p:{label}"


@dataclass
class LoadedModel:
    """A fitted head and its description (``meta`` is ``model.json``)."""

    folder: Path
    pipeline: Any
    meta: dict

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def feature_space(self) -> dict:
        return self.meta["feature_space"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def feature_space(store_meta: dict) -> dict:
    """The part of a store group's metadata that makes features comparable."""
    missing = [k for k in FEATURE_SPACE_KEYS if k not in store_meta]
    if missing:
        raise FeatkitError(f"store metadata lacks {', '.join(missing)}; re-extract with this featkit version")
    space = {k: store_meta[k] for k in FEATURE_SPACE_KEYS}
    space["dim"] = int(space["dim"])
    space["preprocess"] = store_meta.get("preprocess")
    return space


def save_model(folder: Path, pipeline: Any, *, meta: dict) -> Path:
    """Write ``model.skops`` and ``model.json`` into ``folder`` (atomically, file by file)."""
    import skops.io as sio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("task", "clf", "classes", "feature_space"):
        if key not in meta:
            raise ValueError(f"model meta needs {key!r}")
    model_path = folder / MODEL_FILE
    with new_file(model_path, fix=RUNS_ELSEWHERE) as tmp:
        sio.dump(pipeline, tmp)
    doc = {"format": FORMAT, "featkit_version": __version__, **meta,
           "model_file": MODEL_FILE, "model_sha256": _sha256(model_path)}
    with new_file(folder / META_FILE, fix=RUNS_ELSEWHERE) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    return folder


def read_meta(folder: Path) -> dict:
    """``model.json`` of ``folder``, checked for completeness and version."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FeatkitError(f"model folder {folder} does not exist (pass a run folder written by `featkit fit`)")
    meta_path, model_path = folder / META_FILE, folder / MODEL_FILE
    missing = [p.name for p in (meta_path, model_path) if not p.is_file()]
    if missing:
        raise FeatkitError(
            f"model folder {folder} is incomplete: {', '.join(missing)} missing (a run without a saved model, "
            "or a copy that was cut short); refit with `featkit fit`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FeatkitError(f"{meta_path} is not valid JSON ({err}); the model folder is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FeatkitError(f"{meta_path} is not a featkit model description (format {meta.get('format')!r}, "
                           f"expected {FORMAT!r})" if isinstance(meta, dict) else f"{meta_path} is not a JSON object")
    version = meta.get("featkit_version")
    if version != __version__:
        raise FeatkitError(
            f"model folder {folder} was written by featkit {version}; this is featkit {__version__}. "
            "Models are only loaded by the version that saved them: refit with `featkit fit`"
        )
    for key in ("task", "clf", "classes", "feature_space", "model_sha256"):
        if key not in meta:
            raise FeatkitError(f"{meta_path} lacks {key!r}; the model folder is incomplete — refit with `featkit fit`")
    return meta


def load_model(folder: Path) -> LoadedModel:
    """Load a saved head without executing code from the folder; refuse anything unexpected."""
    import skops.io as sio

    folder = Path(folder)
    meta = read_meta(folder)
    model_path = folder / MODEL_FILE
    if _sha256(model_path) != meta["model_sha256"]:
        raise FeatkitError(
            f"{model_path} does not match the sha256 recorded in {META_FILE}: the file was changed or "
            "truncated after saving; refusing to load it"
        )
    try:
        found = sio.get_untrusted_types(file=model_path)
    except Exception as err:  # skops raises many types for a damaged file
        raise FeatkitError(f"{model_path} is not a readable skops file ({type(err).__name__}: {err})") from None
    unexpected = sorted(set(found) - set(TRUSTED_TYPES))
    if unexpected:
        raise FeatkitError(
            f"{model_path} holds types featkit does not trust: {', '.join(unexpected)}; refusing to load it "
            "(loading could run code from the folder). Only models saved by `featkit fit` are loaded"
        )
    try:
        pipeline = sio.load(model_path, trusted=list(found))
    except Exception as err:
        raise FeatkitError(f"cannot load {model_path}: {type(err).__name__}: {err}") from None
    learned = [str(c) for c in getattr(pipeline, "classes_", [])]
    if learned != [str(c) for c in meta["classes"]]:
        raise FeatkitError(f"{model_path} predicts classes {learned}, but {META_FILE} lists {meta['classes']}")
    return LoadedModel(folder=folder, pipeline=pipeline, meta=meta)
