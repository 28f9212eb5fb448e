"""UMAP of a cached feature set: 2-D coordinates cached in the store, a PNG per task, one HTML page.

Coordinates are fitted once on every embedded image of the group (labelled or not)
and shared by all tasks. They are stored beside the features
(``<backbone>/<variant>/aux/umap-<hash>``), keyed by a hash of the UMAP parameters
and the ordered ids they embed: a second call with the same parameters and the same
done rows reads them back without importing umap.

numba compiles umap's kernels on first use and caches them on disk; featkit points
``NUMBA_CACHE_DIR`` at ``~/.cache/featkit/numba`` (unless the user set it) before umap
is imported, so the cache survives between runs and is never in a read-only
site-packages.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featkit.embeddings import Embeddings, resolve_tasks
from featkit.errors import FeatkitError, choices_message
from featkit.explore.html import umap_html
from featkit.explore.neighbors import cosine_knn
from featkit.explore.plots import figure_png, scatter_figure, scatter_png
from featkit.paths import slug
from featkit.store import FeatureStore

AUX_PREFIX = "umap-"
KNN_METHODS = ("auto", "exact", "nndescent")
EXACT_KNN_MAX = 20_000  # auto: exact blocked cosine k-NN up to this many points, umap's NN-descent above


@dataclass(frozen=True)
class UmapSettings:
    """UMAP parameters (the cache key) and what to draw from the coordinates."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    seed: int | None = 0  # None: parallel and faster, but not reproducible
    knn: str = "auto"  # neighbour search: exact (BLAS, cosine only), nndescent (umap's), auto
    png: bool = True
    html: bool = True
    max_thumbnails: int = 1000  # hover thumbnails embedded in the HTML page (a random subsample)
    thumb_size: int = 96

    def params(self) -> dict:
        """What the coordinates depend on (the output options do not)."""
        return {"n_neighbors": self.n_neighbors, "min_dist": self.min_dist, "metric": self.metric, "seed": self.seed,
                "knn": self.knn}

    def exact_knn(self, n_points: int) -> bool:
        """Whether the neighbour graph is computed exactly here (cosine only) rather than by NN-descent."""
        if self.knn == "auto":
            return self.metric == "cosine" and n_points <= EXACT_KNN_MAX
        return self.knn == "exact"

    def validate(self, n_points: int | None = None) -> None:
        if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 2:
            raise FeatkitError(f"n_neighbors must be an integer of at least 2, got {self.n_neighbors!r}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise FeatkitError(f"min_dist must be between 0 and 1 (UMAP's spread), got {self.min_dist}")
        if self.knn not in KNN_METHODS:
            raise FeatkitError(choices_message("neighbour search", self.knn, KNN_METHODS))
        if self.knn == "exact" and self.metric != "cosine":
            raise FeatkitError(f"exact neighbour search is implemented for the cosine metric only, not "
                               f"{self.metric!r}; use knn='nndescent' (--knn nndescent)")
        if self.max_thumbnails < 0 or self.thumb_size < 8:
            raise FeatkitError(f"max_thumbnails must be >= 0 and thumb_size >= 8, got {self.max_thumbnails}, "
                               f"{self.thumb_size}")
        if n_points is not None and n_points <= self.n_neighbors:
            raise FeatkitError(
                f"UMAP with n_neighbors={self.n_neighbors} needs more than {self.n_neighbors} embedded images, "
                f"but there are only {n_points}; pass --neighbors {max(2, n_points - 1)} or fewer"
                + ("" if n_points > 2 else " (and embed more images: UMAP needs at least 3)")
            )


@dataclass
class UmapResult:
    """``coords[i]`` is the 2-D position of ``ids[i]``; ``labels`` (task -> given labels) colour the figure."""

    key: str
    ids: np.ndarray
    coords: np.ndarray
    params: dict
    aux_name: str
    cached: bool
    seconds: float
    note: str = ""
    labels: dict = field(default_factory=dict, repr=False)
    task: str | None = None  # the task the figure is coloured by (None: no colours)

    @property
    def frame(self):
        """A pandas DataFrame: id, x, y and one column per task's given label."""
        import pandas as pd

        frame = pd.DataFrame({"id": self.ids.astype(str), "x": self.coords[:, 0], "y": self.coords[:, 1]})
        for task, values in self.labels.items():
            frame[task] = values
        return frame

    def figure(self, task: str | None = None):
        """A matplotlib Figure of the map, coloured by ``task``'s given labels (default: the result's task)."""
        task = task or self.task
        if task is not None and task not in self.labels:
            raise FeatkitError(f"unknown task {task!r}; this map has labels for: {', '.join(self.labels) or '(none)'}")
        values = self.labels[task] if task else np.full(len(self.ids), None, dtype=object)
        return scatter_figure(self.coords, values, title=f"{self.key} — UMAP" + (f" — {task}" if task else ""))

    def _repr_png_(self) -> bytes:  # notebooks show the figure inline
        return figure_png(self.figure())

    def to_dict(self) -> dict:
        return {"key": self.key, "n": len(self.ids), "params": self.params, "aux": self.aux_name,
                "cached": self.cached, "seconds": round(self.seconds, 3), "note": self.note}


@dataclass
class UmapReport:
    result: UmapResult
    tasks: tuple[str, ...]
    pngs: dict[str, Path] = field(default_factory=dict)
    html: Path | None = None
    thumbnails: int = 0

    def to_dict(self) -> dict:
        return {**self.result.to_dict(), "tasks": list(self.tasks),
                "png": {t: str(p) for t, p in self.pngs.items()},
                "html": str(self.html) if self.html else None, "thumbnails": self.thumbnails}


# -- numba / umap ------------------------------------------------------------------------
def numba_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "featkit" / "numba"


def ensure_numba_cache() -> str:
    """Point numba's on-disk JIT cache at a persistent folder unless the user chose one."""
    if not os.environ.get("NUMBA_CACHE_DIR"):
        folder = numba_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(folder)
        if "numba" in sys.modules:  # imported earlier by someone else: make it re-read the variable
            sys.modules["numba"].config.reload_config()
    return os.environ["NUMBA_CACHE_DIR"]


def enable_jit_caching(prefixes: tuple[str, ...] = ("umap", "pynndescent")) -> int:
    """Turn on numba's on-disk cache for the jitted functions of umap/pynndescent that lack it.

    umap-learn declares some kernels without ``cache=True`` (``smooth_knn_dist``,
    ``compute_membership_strengths``, the layout epoch, ...), so every new process
    compiles them again — tens of seconds. numba's ``Dispatcher.enable_caching`` is
    what ``cache=True`` itself calls; after it those kernels load from
    ``NUMBA_CACHE_DIR`` too. Returns how many dispatchers were switched.
    """
    try:
        from numba.core.caching import NullCache
        from numba.core.registry import CPUDispatcher
    except ImportError:  # pragma: no cover - a numba without these internals: just slower
        return 0
    switched = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(prefixes):
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, CPUDispatcher) and isinstance(obj._cache, NullCache) and not obj.signatures:
                try:
                    obj.enable_caching()
                    switched += 1
                except Exception:  # pragma: no cover - e.g. a function numba cannot cache
                    continue
    return switched


def _import_umap():
    ensure_numba_cache()
    try:
        import umap
        import umap.umap_  # noqa: F401  (the modules whose kernels get cached)
    except ImportError:
        raise FeatkitError("UMAP needs umap-learn, which is not installed: pip install 'umap-learn>=0.5.5'") from None
    enable_jit_caching()
    return umap


def compute_umap(X: np.ndarray, settings: UmapSettings = UmapSettings()) -> np.ndarray:
    """Fit UMAP on ``X`` and return ``(n, 2)`` float32 coordinates."""
    settings.validate(len(X))
    umap = _import_umap()
    from umap.distances import named_distances

    if settings.metric not in named_distances:
        raise FeatkitError(choices_message("UMAP metric", settings.metric, list(named_distances)))
    X = np.asarray(X, dtype=np.float32)
    precomputed = exact_cosine_knn(X, settings.n_neighbors) if settings.exact_knn(len(X)) else (None, None, None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value .* overridden.*")
        warnings.filterwarnings("ignore", message=".*gradient function is not yet implemented.*")
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # we never transform new points
        warnings.filterwarnings("ignore", message=".*Cannot cache compiled function.*")
        reducer = umap.UMAP(n_components=2, n_neighbors=settings.n_neighbors, min_dist=settings.min_dist,
                            metric=settings.metric, random_state=settings.seed, init="spectral",
                            precomputed_knn=precomputed)
        coords = reducer.fit_transform(X)
    return np.asarray(coords, dtype=np.float32)


def exact_cosine_knn(X: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's neighbour graph computed exactly: (indices, cosine distances), each row starting with itself.

    Blocked matrix products (BLAS) instead of NN-descent: exact, and with no numba
    kernel to compile — NN-descent's cannot be cached on disk, so they cost tens of
    seconds in every new process.
    """
    index, sims = cosine_knn(X, n_neighbors - 1)
    rows = np.arange(len(X))[:, None]
    knn_index = np.hstack([rows, index]).astype(np.int32)
    knn_dist = np.hstack([np.zeros((len(X), 1), np.float32), np.clip(1.0 - sims, 0.0, 2.0)]).astype(np.float32)
    return knn_index, knn_dist


def cache_name(params: dict, ids) -> str:
    """``umap-<16 hex>``: a hash of the parameters and the ordered ids the coordinates embed."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for image_id in ids:
        digest.update(str(image_id).encode() + b"\0")
    return AUX_PREFIX + digest.hexdigest()[:16]


def cached_umap(store: FeatureStore, key: str, ids: np.ndarray,
                settings: UmapSettings = UmapSettings()) -> UmapResult | None:
    """Coordinates of ``ids`` (in that order) from the store's cache, without reading any feature; else None."""
    name = cache_name(settings.params(), ids)
    start = time.perf_counter()
    hit = store.read_aux(key, name)
    if hit is None:
        return None
    return UmapResult(key=key, ids=np.asarray(ids), coords=np.asarray(hit[0], np.float32), params=settings.params(),
                      aux_name=name, cached=True, seconds=time.perf_counter() - start)


def umap_coordinates(emb: Embeddings, *, settings: UmapSettings = UmapSettings(),
                     refresh: bool = False) -> UmapResult:
    """UMAP coordinates of every row of ``emb``: from the store's cache, or fitted and cached there."""
    settings.validate(len(emb))
    hit = None if refresh or emb.store is None else cached_umap(emb.store, emb.key, emb.ids, settings)
    if hit is not None:
        return hit
    start = time.perf_counter()
    coords = compute_umap(emb.X, settings)
    name = cache_name(settings.params(), emb.ids)
    seconds = time.perf_counter() - start
    attrs = {"params": json.dumps(settings.params(), sort_keys=True), "n": len(emb), "seconds": round(seconds, 3),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    note = ""
    if emb.store is not None:
        try:
            with emb.store.writer() as writer:
                writer.write_aux(emb.key, name, coords, attrs)
        except FeatkitError as err:  # another process is writing the store: the result is still good
            note = f"coordinates not cached: {err}"
    return UmapResult(key=emb.key, ids=emb.ids, coords=coords, params=settings.params(), aux_name=name, cached=False,
                      seconds=seconds, note=note)


def draw_umap(emb: Embeddings, *, tasks=None, out: Path | None = None, settings: UmapSettings = UmapSettings(),
              refresh: bool = False) -> UmapReport:
    """Coordinates (cached), a PNG per task coloured by class and an interactive HTML page."""
    tasks = resolve_tasks(emb.manifest, tasks)
    result = umap_coordinates(emb, settings=settings, refresh=refresh)
    result.labels = {task: emb.labels(task) for task in tasks}
    result.task = tasks[0] if len(tasks) == 1 else None
    out = Path(out) if out else emb.explore_dir
    report = UmapReport(result=result, tasks=tasks)
    title = f"{emb.manifest.name} — {emb.key} — UMAP ({settings.metric}, k={settings.n_neighbors})"
    if settings.png:
        for task in tasks:
            report.pngs[task] = scatter_png(result.coords, result.labels[task], out / f"umap_{slug(task)}.png",
                                            title=f"{title}\n{task}")
    if settings.html:
        report.html, report.thumbnails = umap_html(
            out / "umap.html", coords=result.coords, ids=result.ids, labels=result.labels, paths=emb.paths(),
            title=title, max_thumbnails=settings.max_thumbnails, thumb_size=settings.thumb_size,
            seed=settings.seed or 0)
    return report


__all__ = ["UmapSettings", "UmapResult", "UmapReport", "cached_umap", "compute_umap", "umap_coordinates",
           "draw_umap", "ensure_numba_cache", "cache_name"]
