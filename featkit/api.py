"""featkit from Python: a collection, its cached embeddings, and the verbs a notebook uses.

::

    import featkit as fk
    col = fk.open("my-collection")         # featkit.toml, or inferred from labels.csv / an image folder
    emb = col.extract("resnet50")           # cached and resumable; a progress bar in notebooks too
    res = emb.fit("glaze", clf="lgbm")      # metrics, out-of-fold predictions, fitted pipeline; res.save()
    emb.umap(task="glaze")                  # cached coordinates + a figure that displays inline
    emb.similar("images/0001.jpg", k=10)    # nearest images with cosine scores
    col.predict(["new.jpg"], model=res)     # or a saved run folder

Embeddings expose ``ids``, ``X``, ``labels(task)`` and ``groups`` as numpy arrays, so
scikit-learn is one line away. The CLI calls exactly these.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

import featkit.embeddings as core
from featkit.config import CONFIG_NAME, Config, find_config
from featkit.data.manifest import Manifest, infer_config, load_manifest
from featkit.errors import FeatkitError
from featkit.store import FeatureStore


class Embeddings(core.Embeddings):
    """A store group's embeddings lined up with the collection, with the analysis verbs."""

    def fit(self, task: str, clf: str = "logreg", **settings: Any):
        """Fit and honestly evaluate head ``clf`` on ``task`` (settings: :class:`featkit.fit.FitSettings` fields)."""
        from featkit.fit import FitSettings, fit

        return fit(self, task, clf, settings=FitSettings(**settings))

    def umap(self, task: str | None = None, *, refresh: bool = False, **settings: Any):
        """UMAP coordinates (cached in the store); the result shows as a figure coloured by ``task``."""
        from featkit.explore.umap import UmapSettings, umap_coordinates

        result = umap_coordinates(self, settings=UmapSettings(**settings), refresh=refresh)
        result.labels = {t: self.labels(t) for t in self.tasks}
        result.task = core.resolve_task(self.manifest, task) if task or len(self.tasks) == 1 else None
        return result

    def similar(self, query, k: int = 10, *, task: str | None = None, label: str | None = None) -> pd.DataFrame:
        """The ``k`` images most similar to ``query`` (an id, a path, or an embedding), with cosine scores."""
        from featkit.explore.similar import similar

        return similar(self, query, k=k, task=task, label=label)

    def clusters(self, k: int | None = None, **settings: Any):
        """k-means clusters (cosine; ``k`` by silhouette unless given), comparable with every task's labels."""
        from featkit.explore.clusters import ClusterSettings, cluster_embeddings

        return cluster_embeddings(self, ClusterSettings(k=k, **settings))

    def outliers(self, task: str, **settings: Any):
        from featkit.explore.outliers import OutlierSettings, find_outliers

        return find_outliers(self, task, settings=OutlierSettings(**settings))

    def label_issues(self, task: str, **settings: Any):
        from featkit.explore.label_issues import LabelIssueSettings, find_label_issues

        return find_label_issues(self, task, settings=LabelIssueSettings(**settings))

    def duplicates(self, **settings: Any):
        from featkit.explore.duplicates import DuplicateSettings, find_duplicates

        return find_duplicates(self, settings=DuplicateSettings(**settings))

    def separability(self, tasks=None, **settings: Any):
        from featkit.explore.separability import SeparabilitySettings, separability

        return separability([self], tasks=tasks, settings=SeparabilitySettings(**settings))


class Collection:
    """A collection folder: its settings (featkit.toml), its labelled images and its feature store."""

    def __init__(self, config: Config, *, corrections: bool = True) -> None:
        self.config = config
        self.corrections = corrections  # apply corrections.csv beside the manifest (False: labels as given)
        self._manifest: Manifest | None = None

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, {len(self)} images, tasks {', '.join(self.tasks) or '(none)'})"

    # -- what it holds ------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = load_manifest(self.config, corrections=self.corrections)
        return self._manifest

    @property
    def store(self) -> FeatureStore:
        return FeatureStore(self.config.store_path)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def root(self) -> Path:
        return self.config.root

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def ids(self) -> np.ndarray:
        return self.manifest.ids

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.manifest.tasks

    def labels(self, task: str) -> np.ndarray:
        return self.manifest.task_labels(task)

    @property
    def groups(self) -> np.ndarray | None:
        return self.manifest.groups

    @property
    def split(self) -> np.ndarray | None:
        return self.manifest.split

    def frame(self) -> pd.DataFrame:
        """The collection as a table: id, path, one column per task, group and split."""
        m = self.manifest
        frame = pd.DataFrame({"id": m.ids, "path": [str(p) for p in m.paths()]})
        for task in m.tasks:
            frame[task] = m.task_labels(task)
        if m.groups is not None:
            frame["group"] = m.groups
        if m.split is not None:
            frame["split"] = m.split
        return frame

    def keys(self) -> list[str]:
        """Cached store groups (``backbone/variant``)."""
        return self.store.keys() if self.store.exists() else []

    # -- verbs ------------------------------------------------------------------------------
    def extract(self, backbone: str = "mobilenet_v2", *, weights: str | None = None, variant: str | None = None,
                settings=None, **options: Any) -> Embeddings:
        """Embed every image with ``backbone`` (cached and resumable) and return the embeddings.

        ``options`` are :class:`featkit.extract.ExtractSettings` fields (``tta``, ``batch_size``,
        ``device``, ``engine`` ...), applied over ``settings``; ``variant`` may name a fine-tuned
        trunk (``finetuned-<run>``) or label rows of the chosen weights.
        """
        summary = self.extract_summary(backbone, weights=weights, variant=variant, settings=settings, **options)
        return self.embeddings(key=summary.key)

    def extract_summary(self, backbone: str = "mobilenet_v2", *, weights: str | None = None,
                        variant: str | None = None, settings=None, **options: Any):
        """:meth:`extract`, returning what the run did (:class:`featkit.extract.cache.ExtractSummary`)."""
        from featkit.backbones.variants import load_backbone, split_tta
        from featkit.extract.cache import extract
        from featkit.extract.settings import ExtractSettings

        settings = dataclasses.replace(settings or ExtractSettings(), **options)
        if variant:
            variant, tta = split_tta(variant)
            if tta != "none":
                if settings.tta not in ("none", tta):
                    raise FeatkitError(f"variant names TTA {tta!r} but tta={settings.tta!r} was asked; give one")
                settings = dataclasses.replace(settings, tta=tta)
        manifest = self.manifest  # a manifest that cannot be read fails before a network loads
        net = load_backbone(backbone, weights=weights, variant=variant, config=self.config)
        return extract(manifest, net, store=self.store, settings=settings)

    def embeddings(self, backbone: str | None = None, variant: str | None = None, *,
                   key: str | None = None) -> Embeddings:
        """The cached embeddings of ``backbone``/``variant`` (the store's only group when both are None)."""
        key = key or core.resolve_key(self.store, backbone=backbone, variant=variant)
        loaded = core.load_embeddings(self.store, self.manifest, key)
        return Embeddings(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)})

    def all_embeddings(self, backbone: str | None = None, variant: str | None = None) -> list[Embeddings]:
        """Every cached group matching ``backbone``/``variant`` (all of them by default)."""
        return [self.embeddings(key=k) for k in core.resolve_keys(self.store, backbone=backbone, variant=variant)]

    def predict(self, images: Sequence, *, model, **settings: Any) -> pd.DataFrame:
        """Labels and probabilities for ``images`` (files, folders, CSVs) from ``model`` (a fit result or run folder).

        Several models (one per task) may be given as a list. Images of this collection
        reuse their stored rows; others are embedded as the model's features were.
        """
        from featkit.predict import PredictSettings, predict_images

        models = model if isinstance(model, (list, tuple)) else [model]
        result = predict_images(models, list(images), manifest=self.manifest, store=self.store,
                                settings=PredictSettings(**settings))
        return result.frame

    def finetune(self, tasks: Sequence[str] | str | None = None, **settings: Any):
        """Fine-tune one shared trunk with a head per task; the trunk becomes variant ``finetuned-<run>``."""
        from featkit.finetune import FinetuneSettings, finetune

        chosen = core.resolve_tasks(self.manifest, tasks)
        return finetune(self.config, self.manifest, settings=FinetuneSettings(tasks=chosen, **settings))


def open(path: str | Path = ".", *, corrections: bool = True, **overrides: Any) -> Collection:  # noqa: A001
    """The collection in folder ``path`` (``featkit.open``, like ``io.open``).

    With a ``featkit.toml`` there, it is read (``overrides`` replace its settings, as CLI
    flags do). Without one, the settings are inferred — from ``labels.csv`` (image, task,
    group and split columns) or from an image folder tree (``<class>/<image>``) — and
    nothing is written: run ``featkit init`` to keep them. Labels carry the decisions of
    ``corrections.csv`` beside the manifest unless ``corrections=False``.
    """
    folder = Path(path).resolve()
    if folder.is_file() and folder.name == CONFIG_NAME:
        folder = folder.parent
    if not folder.is_dir():
        raise FeatkitError(f"no collection folder at {folder}")
    if (folder / CONFIG_NAME).is_file():
        return Collection(find_config(folder).replace(**overrides), corrections=corrections)
    csv = folder / "labels.csv"
    if csv.is_file():
        config, _ = infer_config(csv, root=folder)
        return Collection(config.replace(**overrides), corrections=corrections)
    if (folder / "images").is_dir() or any(p.is_dir() for p in folder.iterdir()):
        images = folder / "images" if (folder / "images").is_dir() else folder
        config = Config(root=folder, name=folder.name, image_folder=images.relative_to(folder), tasks=("label",))
        return Collection(config.replace(**overrides), corrections=corrections)
    raise FeatkitError(f"{folder} has no {CONFIG_NAME}, no labels.csv and no image folders; run `featkit init` there")
