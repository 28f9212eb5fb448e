"""Predict labels and probabilities for new images with saved heads (``featkit predict``).

Inputs are image files, folders (searched recursively) or manifest CSVs. Features come
from the collection's store when it holds the image with the model's exact feature
space; everything else is embedded on the fly with the model's own backbone, weights
and preprocessing. A model whose feature space differs from the store's or from the
backbone available here (other backbone, weights sha256, preprocessing fingerprint,
dimension) is refused: its predictions would be meaningless.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.config import Config
from featkit.data.manifest import IMAGE_EXTENSIONS
from featkit.errors import FeatkitError
from featkit.modelio import FEATURE_SPACE_KEYS, LoadedModel, load_model
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


@dataclass
class PredictResult:
    """One row per input image: per-task label and probabilities, or the error that stopped it."""

    tasks: list[str]
    rows: list[dict]
    sources: dict = field(default_factory=dict)  # "store" / "embedded" / "failed" counts
    models: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"tasks": self.tasks, "models": self.models, "sources": self.sources, "predictions": self.rows}


# -- models ----------------------------------------------------------------------------
def load_models(paths: list[Path]) -> list[LoadedModel]:
    """Model folders (a folder of run folders counts as all of them); one model per task."""
    if not paths:
        raise FeatkitError("no model given; pass --model runs/<run> (a folder written by `featkit fit`)")
    folders: list[Path] = []
    for path in map(Path, paths):
        children = sorted(p.parent for p in path.glob("*/model.json")) if path.is_dir() else []
        if path.is_dir() and not (path / "model.json").exists() and children:
            folders.extend(children)
        else:
            folders.append(path)
    models = [load_model(f) for f in folders]
    by_task: dict[str, list[str]] = {}
    for m in models:
        by_task.setdefault(m.task, []).append(str(m.folder))
    clash = {t: f for t, f in by_task.items() if len(f) > 1}
    if clash:
        raise FeatkitError("one model per task, please; several predict " +
                           "; ".join(f"{t}: {', '.join(f)}" for t, f in clash.items()))
    return models


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


def resolve_inputs(inputs: list[Path], *, image_column: str | None = None) -> list[Path]:
    """Image files, every image below folders, and the images a CSV lists; in order, once each."""
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
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise FeatkitError(f"no images found in {', '.join(map(str, inputs))}")
    return unique


# -- features --------------------------------------------------------------------------
def _from_store(model: LoadedModel, paths: list[Path], config: Config | None) -> dict[int, np.ndarray]:
    if config is None:
        return {}
    store = FeatureStore(config.store_path)
    key = model.meta.get("store_key") or f"{model.feature_space['backbone']}/{model.feature_space['variant']}"
    if not store.exists() or key not in store.keys():
        return {}
    problems = _mismatch(model.feature_space, store.meta(key))
    if problems:
        raise FeatkitError(
            f"model {model.folder} does not match the store's {key} ({'; '.join(problems)}): it was fitted on "
            "features made differently, so its predictions would be meaningless. Refit it on this store, or "
            "predict with a model fitted on these features"
        )
    root = config.manifest_path.parent.resolve() if config.manifest_path else (config.image_folder_path or config.root)
    ids = {}
    for i, path in enumerate(paths):
        try:
            ids[path.relative_to(Path(root).resolve()).as_posix()] = i
        except ValueError:
            continue
    if not ids:
        return {}
    features = store.load(key, ids=list(ids))
    return {ids[image_id]: row for image_id, row in zip(features.ids, features.X)}


def _embed(model: LoadedModel, paths: list[Path], config: Config | None,
           settings: PredictSettings) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    from featkit.extract import (ExtractSettings, ImageDataset, default_workers, embed_batch, make_loader,
                                 prepare_model, resolve_device, resolve_precision)
    from featkit.pipeline import load_backbone

    space = model.feature_space
    net = load_backbone(config or Config(root=Path.cwd(), name="predict"), space["backbone"],
                        weights=space.get("weights"), variant=space.get("variant"))
    found = {"backbone": net.name, "weights": net.weights, "weights_sha256": net.weights_sha256,
             "preprocess_fingerprint": net.preprocess.fingerprint, "dim": net.dim}
    problems = _mismatch(space, found)
    if problems:
        raise FeatkitError(
            f"model {model.folder} was fitted on {space['backbone']}/{space['variant']} features, but the backbone "
            f"available here differs ({'; '.join(problems)}); its predictions would be meaningless"
        )
    ExtractSettings(batch_size=settings.batch_size, workers=settings.workers, device=settings.device,
                    precision=settings.precision).validate()
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    pre = net.preprocess
    dataset = ImageDataset([str(p) for p in paths], pre.image_transform(), pre.crop_size, draft_size=pre.resize_size)
    workers = default_workers(device) if settings.workers is None else settings.workers
    loader = make_loader(dataset, batch_size=settings.batch_size, workers=min(workers, max(1, len(paths) // 8)),
                         device=device)
    net_model = prepare_model(net, device, True)
    feats, errors = {}, {}
    for positions, images, errs in loader:
        positions = positions.tolist()
        ok = [j for j, e in enumerate(errs) if not e]
        for j, e in enumerate(errs):
            if e:
                errors[positions[j]] = e
        if ok:
            out = embed_batch(net_model, images[ok], net, device=device, precision=precision, channels_last=True)
            feats.update({positions[j]: row for j, row in zip(ok, out)})
    return feats, errors


def predict_images(
    models: list[Path] | list[LoadedModel],
    inputs: list[Path],
    *,
    config: Config | None = None,
    settings: PredictSettings = PredictSettings(),
) -> PredictResult:
    """Labels and probabilities per task for every input image (see the module docstring)."""
    loaded = [m if isinstance(m, LoadedModel) else None for m in models]
    if any(m is None for m in loaded):
        loaded = load_models([Path(m) for m in models])
    paths = resolve_inputs(inputs, image_column=settings.image_column or (config.image_column if config else None))
    rows = [{"image": _display(p), "error": None, "source": None} for p in paths]
    spaces: dict[tuple, list[LoadedModel]] = {}
    for m in loaded:
        spaces.setdefault(_space_key(m), []).append(m)
    counts = {"store": 0, "embedded": 0, "failed": 0}
    for group in spaces.values():
        first = group[0]
        feats = _from_store(first, paths, config) if settings.use_store else {}
        rest = [i for i in range(len(paths)) if i not in feats]
        embedded, errors = _embed(first, [paths[i] for i in rest], config, settings) if rest else ({}, {})
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
        for m in group:
            proba = m.pipeline.predict_proba(X)
            classes = [str(c) for c in m.pipeline.classes_]
            for i, p in zip(order, proba):
                best = int(np.argmax(p))
                rows[i][m.task] = {"label": classes[best], "probability": round(float(p[best]), 4),
                                   "probabilities": {c: round(float(v), 4) for c, v in zip(classes, p)}}
                rows[i]["source"] = "embedded" if i in rest else "store"
    models_info = [{"folder": str(m.folder), "task": m.task, "clf": m.meta["clf"], "classes": m.classes,
                    "feature_space": f"{m.feature_space['backbone']}/{m.feature_space['variant']}"} for m in loaded]
    return PredictResult(tasks=[m.task for m in loaded], rows=rows, sources=counts, models=models_info)


def _display(path: Path) -> str:
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def write_predictions_csv(result: PredictResult, path: Path) -> Path:
    """``image, <task>, <task>_probability, <task>:<class>..., error`` per image."""
    columns = ["image"]
    for m in result.models:
        columns += [m["task"], f"{m['task']}_probability", *(f"{m['task']}:{c}" for c in m["classes"])]
    columns.append("error")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in result.rows:
            out = [row["image"]]
            for m in result.models:
                pred = row.get(m["task"])
                out += [pred["label"], pred["probability"], *(pred["probabilities"].get(c, "") for c in m["classes"])] \
                    if pred else ["", "", *([""] * len(m["classes"]))]
            out.append(row["error"] or "")
            writer.writerow(out)
    return Path(path)
