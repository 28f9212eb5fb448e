"""Predict labels and probabilities for new images with fitted heads (``featkit predict``).

Inputs are image files, folders (searched recursively) or manifest CSVs. Features come
from the collection's store when it holds the image with the model's exact feature
space (an image of the collection, however it is reached — a symlinked ``images/``
folder included); everything else is embedded in memory through the same runtime as
``featkit extract`` (:class:`featkit.extract.runtime.Embedder`), with the model's own
backbone, weights, preprocessing and test-time augmentation. A model whose feature
space differs from the store's or from the backbone available here (other backbone,
weights sha256, preprocessing fingerprint, dimension) is refused: its predictions would
be meaningless.

**Review.** Every prediction is marked ``needs_review`` when its confidence (top-class
probability) is below the task's review threshold: the one its fit recorded (the
lowest confidence at which the out-of-fold predictions reach precision 0.95), or one
recomputed from the model's saved out-of-fold confidences for ``min_precision``, or
``review_below`` as given. :attr:`PredictResult.review` says, per task, which
threshold was used and how many predictions it sent to review.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from featkit.backbones.variants import split_tta, store_key
from featkit.config import Config
from featkit.data.manifest import IMAGE_EXTENSIONS, Manifest
from featkit.errors import FeatkitError
from featkit.extract.settings import ExtractSettings
from featkit.modelio import FEATURE_SPACE_KEYS, LoadedModel, load_model, probability_column
from featkit.paths import new_file
from featkit.store import FeatureStore


@dataclass(frozen=True)
class PredictSettings:
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    image_column: str | None = None  # for manifest inputs (default: the config's, else detected)
    use_store: bool = True  # reuse the collection store's rows when they match the model
    progress: bool = False
    min_precision: float | None = None  # review below the confidence where out-of-fold precision reaches this
    review_below: float | None = None  # review below this confidence (default: the threshold the fit recorded)

    def validate(self) -> None:
        if self.min_precision is not None and self.review_below is not None:
            raise FeatkitError("give either min_precision (--min-precision) or review_below (--review-below), "
                               "not both")
        if self.min_precision is not None and not 0 < self.min_precision <= 1:
            raise FeatkitError(f"min precision must be in (0, 1], got {self.min_precision}")
        if self.review_below is not None and not 0 <= self.review_below <= 1:
            raise FeatkitError(f"review below is a confidence in [0, 1], got {self.review_below}")


@dataclass
class PredictResult:
    """One row per input image: per-task label and probabilities, or the error that stopped it."""

    tasks: list[str]
    rows: list[dict]
    sources: dict = field(default_factory=dict)  # "store" / "embedded" / "failed" counts
    models: list[dict] = field(default_factory=list)
    review: dict = field(default_factory=dict)  # task -> threshold used, how it was set, predictions sent to review

    def to_dict(self) -> dict:
        return {"tasks": self.tasks, "models": self.models, "sources": self.sources, "review": self.review,
                "predictions": self.rows}

    @property
    def frame(self) -> pd.DataFrame:
        """One row per image: image, source, error, and per task ``<task>`` (the label), ``<task>:confidence``,
        ``<task>:needs_review`` and ``<task>:p:<class>`` (the names of fit's predictions.csv)."""
        out = []
        for row in self.rows:
            flat = {"image": row["image"], "source": row["source"], "error": row["error"]}
            for m in self.models:
                task, pred = m["task"], row.get(m["task"])
                flat[task] = pred["label"] if pred else None
                flat[f"{task}:confidence"] = pred["confidence"] if pred else np.nan
                flat[f"{task}:needs_review"] = pred["needs_review"] if pred else None
                for c in m["classes"]:
                    flat[probability_column(task, c)] = pred["probabilities"].get(c, np.nan) if pred else np.nan
            out.append(flat)
        return pd.DataFrame(out)


# -- models ----------------------------------------------------------------------------
def as_model(model: Any) -> LoadedModel:
    """A saved run folder, a :class:`~featkit.modelio.LoadedModel`, or an in-memory fit result."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(Path(model))
    pipeline, meta = getattr(model, "pipeline", None), getattr(model, "model_meta", None)
    if pipeline is None or not meta:
        raise FeatkitError(f"{model!r} holds no fitted model (fitted with refit=False?); pass a run folder or a "
                           "result of fit()")
    return LoadedModel(folder=getattr(model, "run_dir", None), pipeline=pipeline, meta=meta)


def load_models(models: list) -> list[LoadedModel]:
    """Models (run folders, a folder of run folders, or fit results); one model per task."""
    if not models:
        raise FeatkitError("no model given; pass --model runs/<run> (a folder written by `featkit fit`)")
    expanded: list = []
    for model in models:
        path = Path(model) if isinstance(model, (str, os.PathLike)) else None
        children = sorted(p.parent for p in path.glob("*/model.json")) if path is not None and path.is_dir() else []
        if path is not None and not (path / "model.json").exists() and children:
            expanded.extend(children)
        else:
            expanded.append(model)
    loaded = [as_model(m) for m in expanded]
    by_task: dict[str, list[str]] = {}
    for m in loaded:
        by_task.setdefault(m.task, []).append(str(m.folder or "(in memory)"))
    clash = {t: f for t, f in by_task.items() if len(f) > 1}
    if clash:
        raise FeatkitError("one model per task, please; several predict " +
                           "; ".join(f"{t}: {', '.join(f)}" for t, f in clash.items()))
    return loaded


def review_threshold(model: LoadedModel, settings: PredictSettings) -> dict:
    """The confidence below which ``model``'s predictions need review, and how it was set."""
    from featkit.heads.calibration import review_threshold as from_out_of_fold

    if settings.review_below is not None:
        return {"threshold": settings.review_below, "how": f"--review-below {settings.review_below:g}"}
    saved = model.meta.get("review")
    if saved is None or "out_of_fold" not in model.meta:  # saved by a featkit before review thresholds
        if settings.min_precision is not None:
            raise FeatkitError(f"model {model.folder} records no out-of-fold predictions to set a threshold from "
                               "(fitted by an older featkit); refit it, or pass --review-below CONFIDENCE")
        return {"threshold": None, "min_precision": None,
                "how": "the model records no review threshold (fitted by an older featkit): every prediction is "
                       "marked for review; refit it, or pass --review-below CONFIDENCE"}
    if settings.min_precision is None:
        return {"threshold": saved["threshold"], "min_precision": saved["min_precision"],
                "how": f"the fit's review threshold (out-of-fold precision ≥ {saved['min_precision']:g})"}
    oof = model.meta["out_of_fold"]
    found = from_out_of_fold(np.asarray(oof["confidence"], dtype=float), np.asarray(oof["correct"], dtype=bool),
                             settings.min_precision)
    return {"threshold": found["threshold"], "min_precision": settings.min_precision,
            "how": f"out-of-fold precision ≥ {settings.min_precision:g} on the fit's {found['n']} held-out "
                   f"predictions (kept there: {found['kept']})"}


def _space_key(model: LoadedModel) -> tuple:
    return tuple(str(model.feature_space.get(k)) for k in FEATURE_SPACE_KEYS)


def _mismatch(expected: dict, found: dict) -> list[str]:
    out = []
    for key in FEATURE_SPACE_KEYS:
        if key == "variant":
            continue  # a name, not a property of the features
        a, b = str(expected.get(key)), str(found.get(key))
        if a != b:
            out.append(f"{key} {b[:16]} ≠ model's {a[:16]}")
    return out


# -- inputs ----------------------------------------------------------------------------
def _manifest_images(path: Path, image_column: str | None) -> list[Path]:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise FeatkitError(f"manifest {path} is not a readable CSV: {err}") from None
    if image_column is None:
        for col in frame.columns:
            values = frame[col].str.strip()
            values = values[values != ""]
            if len(values) and values.str.lower().str.endswith(IMAGE_EXTENSIONS).mean() > 0.9:
                image_column = col
                break
    if image_column not in frame.columns:
        raise FeatkitError(f"manifest {path.name} has no image column {image_column!r}; its columns are: "
                           f"{', '.join(frame.columns)} (pass --image-column)")
    return [path.parent / v.strip() for v in frame[image_column] if v.strip()]


def resolve_inputs(inputs: list, *, image_column: str | None = None) -> list[Path]:
    """Image files, every image below folders, and the images a CSV lists; in order, once each.

    Paths are made absolute without resolving symlinks, so an image reached through a
    linked folder keeps the name the collection knows it by.
    """
    if not inputs:
        raise FeatkitError("no images given: pass image files, folders or a manifest CSV")
    found: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.is_file() and path.suffix.lower() == ".csv":
            found.extend(_manifest_images(path, image_column))
        elif path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(path)
        elif path.exists():
            raise FeatkitError(f"{path} is neither an image ({', '.join(IMAGE_EXTENSIONS)}), a folder nor a CSV")
        else:
            raise FeatkitError(f"{path} does not exist")
    unique = list(dict.fromkeys(Path(os.path.abspath(p)) for p in found))
    if not unique:
        raise FeatkitError(f"no images found in {', '.join(map(str, inputs))}")
    return unique


def collection_ids(manifest: Manifest, paths: list[Path]) -> dict[int, str]:
    """Which inputs are images of ``manifest``: input position -> image id.

    An input matches by its path below the manifest's folder, or — when it was reached
    another way (a symlinked folder, an absolute path on the link's target) — by the
    real folder it lies in, compared with the real folders of the manifest's images.
    """
    root = Path(os.path.abspath(manifest.root))
    found: dict[int, str] = {}
    unmatched: list[int] = []
    for i, path in enumerate(paths):
        try:
            found[i] = path.relative_to(root).as_posix()
        except ValueError:
            unmatched.append(i)
    if unmatched:
        folders = {str(Path(i).parent) for i in manifest.ids}
        real = {os.path.realpath(root / f): f for f in folders}
        for i in unmatched:
            folder = real.get(os.path.realpath(paths[i].parent))
            if folder is not None:
                found[i] = (Path(folder) / paths[i].name).as_posix()
    known = manifest.contains(list(found.values())) if found else np.zeros(0, bool)
    return {i: image_id for (i, image_id), ok in zip(found.items(), known) if ok}


# -- features --------------------------------------------------------------------------
def _from_store(model: LoadedModel, paths: list[Path], manifest: Manifest | None,
                store: FeatureStore | None) -> dict[int, np.ndarray]:
    if manifest is None or store is None:
        return {}
    key = model.meta.get("store_key") or store_key(model.feature_space["backbone"], model.feature_space["variant"])
    if not store.exists() or key not in store.keys():
        return {}
    problems = _mismatch(model.feature_space, store.meta(key))
    if problems:
        raise FeatkitError(
            f"model {model.folder or '(in memory)'} does not match the store's {key} ({'; '.join(problems)}): it was "
            "fitted on features made differently, so its predictions would be meaningless. Refit it on this store, "
            "or predict with a model fitted on these features"
        )
    ids = collection_ids(manifest, paths)
    if not ids:
        return {}
    positions: dict[str, list[int]] = {}
    for i, image_id in ids.items():  # one image may be reached by several paths (a link and its target)
        positions.setdefault(image_id, []).append(i)
    features = store.load(key, ids=list(positions))
    return {i: row for image_id, row in zip(features.ids, features.X) for i in positions[str(image_id)]}


def embed_in_space(space: dict, paths: list[Path], *, config: Config | None,
                   settings: PredictSettings = PredictSettings(),
                   what: str = "these features") -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Embed ``paths`` in memory in feature space ``space`` (backbone, weights, preprocessing, TTA).

    Returns ``({position: features}, {position: reason})``. A backbone here that differs
    from ``space`` (weights sha256, preprocessing, dimension) is refused.
    """
    from featkit.backbones.variants import load_backbone
    from featkit.extract.runtime import Embedder, progress_bar

    net = load_backbone(space["backbone"], weights=space.get("weights"), variant=space.get("variant"),
                        config=config)
    found = {"backbone": net.name, "weights": net.weights, "weights_sha256": net.weights_sha256,
             "preprocess_fingerprint": net.preprocess.fingerprint, "dim": net.dim}
    problems = _mismatch(space, found)
    if problems:
        raise FeatkitError(
            f"{what} were made with {space['backbone']}/{space['variant']}, but the backbone available here "
            f"differs ({'; '.join(problems)}); new images embedded now would not be comparable"
        )
    tta = split_tta(str(space.get("variant", "")))[1]
    embedder = Embedder.prepare(net, ExtractSettings(batch_size=settings.batch_size, workers=settings.workers,
                                                     device=settings.device, precision=settings.precision, tta=tta,
                                                     progress=settings.progress))
    ids = np.arange(len(paths)).astype(str)  # positions as ids
    feats, errors = {}, {}
    with progress_bar(settings.progress) as progress:
        task = progress.add_task(f"embed {len(paths)} images", total=len(paths)) if progress else None
        for batch in embedder.embed(ids, paths):
            feats.update({int(i): row for i, row in zip(batch.ids, batch.features)})
            errors.update({int(i): error for i, error in batch.failures})
            if progress:
                progress.update(task, advance=len(batch))
    return feats, errors


def predict_images(models: list, inputs: list, *, manifest: Manifest | None = None,
                   store: FeatureStore | None = None,
                   settings: PredictSettings = PredictSettings()) -> PredictResult:
    """Labels and probabilities per task for every input image (see the module docstring).

    ``models`` are run folders or fit results; ``manifest`` and ``store`` (a collection's)
    let images of the collection reuse their stored rows.
    """
    settings.validate()
    loaded = load_models(list(models))
    thresholds = {m.task: review_threshold(m, settings) for m in loaded}
    config = manifest.config if manifest is not None else None
    paths = resolve_inputs(inputs, image_column=settings.image_column or (config.image_column if config else None))
    rows = [{"image": _display(p), "error": None, "source": None} for p in paths]
    spaces: dict[tuple, list[LoadedModel]] = {}
    for m in loaded:
        spaces.setdefault(_space_key(m), []).append(m)
    counts = {"store": 0, "embedded": 0, "failed": 0}
    for group in spaces.values():
        first = group[0]
        feats = _from_store(first, paths, manifest, store) if settings.use_store else {}
        rest = [i for i in range(len(paths)) if i not in feats]
        embedded, errors = (embed_in_space(first.feature_space, [paths[i] for i in rest], config=config,
                                           settings=settings, what=f"model {first.folder or '(in memory)'}'s features")
                            if rest else ({}, {}))
        for local, row in embedded.items():
            feats[rest[local]] = row
        for local, error in errors.items():
            rows[rest[local]]["error"] = error
        counts["store"] = max(counts["store"], len(feats) - len(embedded))
        counts["embedded"] = max(counts["embedded"], len(embedded))
        counts["failed"] = max(counts["failed"], len(errors))
        order = sorted(feats)
        if not order:
            continue
        X = np.stack([feats[i] for i in order]).astype(np.float32)
        embedded_rows = {rest[local] for local in embedded}
        for m in group:
            proba = m.pipeline.predict_proba(X)
            classes = [str(c) for c in m.pipeline.classes_]
            threshold = thresholds[m.task]["threshold"]
            for i, p in zip(order, proba):
                best = int(np.argmax(p))
                rows[i][m.task] = {"label": classes[best], "confidence": round(float(p[best]), 4),
                                   "needs_review": bool(threshold is None or p[best] < threshold),
                                   "probabilities": {c: round(float(v), 4) for c, v in zip(classes, p)}}
                rows[i]["source"] = "embedded" if i in embedded_rows else "store"
    models_info = [{"folder": str(m.folder) if m.folder else None, "task": m.task, "clf": m.meta["clf"],
                    "classes": m.classes,
                    "feature_space": f"{m.feature_space['backbone']}/{m.feature_space['variant']}"} for m in loaded]
    review = {}
    for task, found in thresholds.items():
        marked = [row[task]["needs_review"] for row in rows if task in row]
        review[task] = {**found, "predicted": len(marked), "sent_to_review": int(sum(marked))}
    return PredictResult(tasks=[m.task for m in loaded], rows=rows, sources=counts, models=models_info,
                         review=review)


def _display(path: Path) -> str:
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def write_predictions_csv(result: PredictResult, path: Path) -> Path:
    """:attr:`PredictResult.frame` as CSV."""
    with new_file(Path(path), fix="pass another -o") as tmp:
        result.frame.to_csv(tmp, index=False)
    return Path(path)
