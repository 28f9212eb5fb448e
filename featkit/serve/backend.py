"""What the workbench asks of featkit, in one place: the routes call a :class:`Workbench` and nothing else.

Everything here is plain Python returning JSON-ready dicts (numbers, strings, lists),
so the same answers serve the page, scripts and tests. Heavy results — a store
group's embeddings and UMAP, clusters, review queues — are computed on first use
and kept; labels are re-read from the corrections file whenever it changes, so
every answer shows the latest decisions.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.api import Collection, Embeddings
from featkit.config import Config
from featkit.data.corrections import (append_corrections, apply_corrections, corrected_manifest, corrections_path,
                                      make_correction, read_corrections)
from featkit.data.images import ImageLoadError, load_image
from featkit.embeddings import resolve_key, resolve_keys
from featkit.errors import FeatkitError, choices_message
from featkit.explore.similar import SimilarityIndex, similar
from featkit.explore.umap import UmapSettings, umap_coordinates
from featkit.modelio import probability_column

QUEUES = ("uncertain", "label-issues", "outliers", "duplicates", "leaks")
COLOR_FIELDS = ("label", "prediction", "confidence", "correct", "group", "split", "cluster")
# Used when a fit report carries no review threshold: a head whose top class has less than
# half the probability is closer to a coin toss between two classes than to a decision.
DEFAULT_REVIEW_THRESHOLD = 0.5


class NotFound(FeatkitError):
    """An id, queue or file the collection does not have (HTTP 404)."""


class BadImage(FeatkitError):
    """An image that cannot be decoded (HTTP 422); the message is the decoder's reason."""


@dataclass(frozen=True)
class WorkbenchSettings:
    backbone: str | None = None  # the store group shown first (default: the store's first)
    variant: str | None = None
    thumb_size: int = 192  # pixels, longer side
    max_upload_bytes: int = 20 * 2**20
    neighbors: int = 8  # nearest neighbours in the detail panel
    queue_size: int = 200  # items per review queue
    user: str | None = None  # written in corrections (default: the login name)

    def validate(self) -> None:
        if not 32 <= self.thumb_size <= 1024:
            raise FeatkitError(f"thumbnail size must be between 32 and 1024 pixels, got {self.thumb_size}")
        if self.max_upload_bytes < 1024:
            raise FeatkitError(f"the upload limit must be at least 1024 bytes, got {self.max_upload_bytes}")
        if self.neighbors < 1 or self.queue_size < 1:
            raise FeatkitError("neighbors and queue_size must be positive")


def thumbnail_dir(config: Config, size: int) -> Path:
    """Where thumbnails are cached: ``<config.cache_dir>/thumbs/<size>/`` (made once, reused by every run)."""
    return config.cache_dir / "thumbs" / str(size)


def _plain(value):
    """numpy scalars and NaN -> JSON values."""
    if value is None:
        return None
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else round(float(value), 4)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


@dataclass
class _View:
    """One store group: its embedded rows, their UMAP coordinates (same order) and an exact search index."""

    key: str
    emb: Embeddings
    coords: np.ndarray
    index: SimilarityIndex  # the rows L2-normalised once
    clusters: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        """Position of each embedded image in the collection."""
        return self.emb.rows


@dataclass
class _Run:
    """The latest fit run of a task on a store group: its out-of-fold predictions."""

    folder: Path
    report: dict
    predictions: pd.DataFrame  # index id; predicted, confidence, <task>:p:<class>...
    stamp: int  # report.json's mtime: queues built from an older report are rebuilt
    proba_columns: dict[str, str]  # class -> its probability column in predictions


class Workbench:
    """The collection behind ``featkit serve``: map, detail, search, review queues and corrections."""

    def __init__(self, config: Config, settings: WorkbenchSettings = WorkbenchSettings()) -> None:
        settings.validate()
        self.config = config
        self.settings = settings
        self.col = Collection(config, corrections=False)  # the labels as given; corrections are applied per request
        self.collection = self.col.manifest
        self.keys = resolve_keys(self.col.store)
        if settings.backbone or settings.variant:
            self.default_key = resolve_key(self.col.store, backbone=settings.backbone, variant=settings.variant)
        else:
            self.default_key = self.keys[0]
        self.user = settings.user or _login()
        self.corrections_file = corrections_path(config)
        self._ids = set(self.collection.ids.tolist())
        self._views: dict[str, _View] = {}
        self._current: dict[str, tuple] = {}  # key -> (labels it was made with, Embeddings with them)
        self._queues: dict[tuple, dict] = {}
        self._runs: dict[tuple, _Run] = {}
        self._reports: dict[Path, tuple] = {}  # report.json -> (mtime, task, store key)
        self._labels_state: tuple | None = None
        self._labels: tuple[dict, pd.DataFrame] | None = None
        self._compute = threading.RLock()
        self._labels_lock = threading.Lock()

    # -- shared pieces ----------------------------------------------------------------
    def _key(self, key: str | None) -> str:
        if key is None or key == "":
            return self.default_key
        if key not in self.keys:
            raise NotFound(choices_message("store group", key, self.keys))
        return key

    def _task(self, task: str | None) -> str:
        tasks = self.collection.tasks
        if task is None or task == "":
            if not tasks:
                raise FeatkitError("the collection has no tasks")
            return tasks[0]
        if task not in tasks:
            raise NotFound(choices_message("task", task, tasks))
        return task

    def _row(self, image_id: str) -> int:
        if image_id not in self._ids:
            raise NotFound(f"image id {image_id!r} is not in collection {self.collection.name!r}")
        return int(self.collection.index_of([image_id])[0])

    def view(self, key: str | None = None) -> _View:
        """The store group's rows and UMAP (computed and cached in the store on first use)."""
        key = self._key(key)
        with self._compute:
            if key not in self._views:
                emb = self.col.embeddings(key=key)
                result = umap_coordinates(emb, settings=UmapSettings(png=False, html=False))  # rows in emb's order
                self._views[key] = _View(key=key, emb=emb, coords=result.coords, index=SimilarityIndex(emb))
            return self._views[key]

    def current(self, view: _View) -> Embeddings:
        """``view``'s embeddings with today's labels (the corrections file applied), for searches filtered by label."""
        labels, _ = self.labels()
        made = self._current.get(view.key)
        if made is None or made[0] is not labels:
            made = (labels, replace(view.emb, manifest=replace(self.collection, labels=labels)))
            self._current[view.key] = made
        return made[1]

    def labels(self) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
        """Every task's labels with the corrections file applied, and its latest decisions (re-read when it changes)."""
        path = self.corrections_file
        state = (path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else None
        with self._labels_lock:
            if self._labels is None or state != self._labels_state:
                decisions = read_corrections(path)
                labels, _ = apply_corrections(self.collection.ids, self.collection.labels, decisions)
                self._labels, self._labels_state = (labels, decisions), state
            return self._labels

    def run(self, task: str, key: str) -> _Run | None:
        """The newest run folder under ``runs/`` that fitted ``task`` on ``key`` (None when there is none)."""
        found = []
        for report_path in self.config.runs_dir.glob("**/report.json"):
            mtime = report_path.stat().st_mtime_ns
            known = self._reports.get(report_path)
            if known is None or known[0] != mtime:  # each report is parsed once per change, not per request
                try:
                    report = json.loads(report_path.read_text())
                except (OSError, json.JSONDecodeError):
                    report = {}
                known = (mtime, report.get("task"), (report.get("store") or {}).get("key"))
                self._reports[report_path] = known
            if known[1:] == (task, key) and (report_path.parent / "predictions.csv").is_file():
                found.append((mtime, report_path.parent))
        if not found:
            return None
        mtime, folder = max(found)
        cache_key = (str(folder), mtime)
        if cache_key not in self._runs:
            frame = pd.read_csv(folder / "predictions.csv", dtype={"id": str, "label": str, "predicted": str},
                                keep_default_na=False)
            prefix = probability_column(task, "")
            columns = {c[len(prefix):]: c for c in frame.columns if c.startswith(prefix)}
            frame["confidence"] = frame[list(columns.values())].max(axis=1)
            report = json.loads((folder / "report.json").read_text())
            self._runs[cache_key] = _Run(folder=folder, report=report, predictions=frame.set_index("id"), stamp=mtime,
                                         proba_columns=columns)
        return self._runs[cache_key]

    # -- what the page shows ----------------------------------------------------------
    def meta(self) -> dict:
        labels, decisions = self.labels()
        classes = {}
        for task in self.collection.tasks:
            values = pd.Series([v for v in labels[task] if v is not None], dtype=object)
            counts = values.value_counts()
            classes[task] = [{"label": str(c), "count": int(n)} for c, n in counts.items()]
        return {"collection": self.collection.name, "images": len(self.collection), "tasks": list(self.collection.tasks),
                "keys": self.keys, "key": self.default_key, "classes": classes,
                "has_group": self.collection.groups is not None, "has_split": self.collection.split is not None,
                "color_fields": list(COLOR_FIELDS), "queues": list(QUEUES),
                "corrections": {"file": str(self.corrections_file), "decisions": len(decisions)},
                "thumb_size": self.settings.thumb_size, "max_upload_bytes": self.settings.max_upload_bytes,
                "user": self.user}

    def items(self, task: str | None = None, key: str | None = None) -> dict:
        """Column-oriented rows of the map: id, x, y, label, prediction, confidence, correct, group, split, corrected."""
        task, view = self._task(task), self.view(key)
        labels, decisions = self.labels()
        ids = view.emb.ids.astype(str)
        given = labels[task][view.rows]
        run = self.run(task, view.key)
        prediction = [None] * len(ids)
        confidence = [None] * len(ids)
        correct = [None] * len(ids)
        if run is not None:
            preds = run.predictions.reindex(ids)
            held_out = preds["predicted"].notna().to_numpy()
            prediction = [p if h else None for p, h in zip(preds["predicted"], held_out)]
            confidence = [round(float(c), 4) if h else None for c, h in zip(preds["confidence"], held_out)]
            correct = [bool(p == y) if h else None for p, y, h in zip(preds["predicted"], preds["label"], held_out)]
        corrected = set(decisions.loc[decisions["task"] == task, "id"])
        emb = view.emb
        return {
            "key": view.key, "task": task, "n": len(ids),
            "run": run.folder.name if run else None,
            "columns": {
                "id": ids.tolist(),
                "x": np.round(view.coords[:, 0].astype(np.float64), 4).tolist(),
                "y": np.round(view.coords[:, 1].astype(np.float64), 4).tolist(),
                "label": given.tolist(),
                "prediction": prediction, "confidence": confidence, "correct": correct,
                "group": emb.groups.tolist() if emb.groups is not None else None,
                "split": emb.split.tolist() if emb.split is not None else None,
                "corrected": [i in corrected for i in ids],
            },
        }

    def clusters(self, key: str | None = None) -> dict:
        """k-means clusters of the store group (k by silhouette), one per map row."""
        from featkit.explore.clusters import cluster_embeddings

        view = self.view(key)
        with self._compute:
            if view.clusters is None:
                view.clusters = cluster_embeddings(view.emb).labels
        return {"key": view.key, "k": int(view.clusters.max()) + 1, "cluster": view.clusters.tolist()}

    def item(self, image_id: str, key: str | None = None) -> dict:
        """The detail panel: every task's label, correction and held-out prediction, the object's other photos,
        nearest neighbours."""
        row = self._row(image_id)
        view = self.view(key)
        labels, decisions = self.labels()
        coll = self.collection
        mine = decisions[decisions["id"] == image_id].set_index("task")
        tasks = {}
        for task in coll.tasks:
            entry = {"given": coll.labels[task][row], "label": labels[task][row], "correction": None,
                     "prediction": None}
            if task in mine.index:
                entry["correction"] = {k: str(v) for k, v in mine.loc[task].items()}
            run = self.run(task, view.key)
            if run is not None:
                entry["prediction"] = self._prediction(run, image_id)
            tasks[task] = entry
        same_group = []
        if coll.groups is not None and coll.groups[row] is not None:
            same_group = [i for i, g in zip(coll.ids, coll.groups) if g == coll.groups[row] and i != image_id][:24]
        embedded = view.index.row_of(image_id) is not None
        neighbors = self._results(similar(self.current(view), image_id, k=self.settings.neighbors,
                                          index=view.index)) if embedded else []
        return {"id": image_id, "key": view.key, "embedded": embedded,
                "group": coll.groups[row] if coll.groups is not None else None,
                "split": coll.split[row] if coll.split is not None else None,
                "tasks": tasks, "same_group": same_group, "neighbors": neighbors}

    @staticmethod
    def _prediction(run: _Run, image_id: str) -> dict:
        info = {"run": run.folder.name, "clf": run.report.get("clf"),
                "split": run.report.get("split", {}).get("description")}
        if image_id not in run.predictions.index:
            return {**info, "held_out": False,
                    "note": "not held out in this run (trained on, or unlabelled): no honest prediction"}
        row = run.predictions.loc[image_id]
        proba = {label: round(float(row[c]), 4) for label, c in run.proba_columns.items()}
        top = dict(sorted(proba.items(), key=lambda kv: -kv[1])[:5])
        return {**info, "held_out": True, "predicted": row["predicted"], "confidence": round(float(row["confidence"]), 4),
                "probabilities": top}

    def _results(self, frame: pd.DataFrame) -> list[dict]:
        """Search results (:func:`similar`'s frame) as JSON rows with every task's label, group and split."""
        coll = self.collection
        out = []
        for pos, r in zip(coll.index_of(frame["id"]), frame.to_dict(orient="records")):
            out.append({"id": r["id"], "score": round(float(r["score"]), 4),
                        "labels": {t: r[t] for t in coll.tasks},
                        "group": coll.groups[pos] if coll.groups is not None else None,
                        "split": coll.split[pos] if coll.split is not None else None})
        return out

    # -- search by image ----------------------------------------------------------------
    def _search_options(self, k, task, label) -> dict:
        try:
            k = int(k) if k not in (None, "") else 12
        except (TypeError, ValueError):
            raise FeatkitError(f"k must be a whole number, got {k!r}") from None
        if not 1 <= k <= 500:
            raise FeatkitError(f"k must be between 1 and 500, got {k}")
        if label and not task:
            raise FeatkitError(f"filtering by label {label!r} needs a task; pass one of: "
                               f"{', '.join(self.collection.tasks)}")
        if task:
            self._task(task)
        return {"k": k, "task": task or None, "label": label or None}

    def similar(self, image_id: str, *, k=None, task=None, label=None, key: str | None = None) -> dict:
        """Top-k images most cosine-similar to a collection image (never itself), optionally of one task/label."""
        self._row(image_id)
        view = self.view(key)
        options = self._search_options(k, task, label)
        if view.index.row_of(image_id) is None:
            raise NotFound(f"image {image_id!r} has no embedding in {view.key} (it failed to decode)")
        return {"query": {"id": image_id}, "key": view.key, **options,
                "results": self._results(similar(self.current(view), image_id, index=view.index, **options))}

    def similar_upload(self, data: bytes, *, filename: str = "upload", k=None, task=None, label=None,
                       key: str | None = None) -> dict:
        """Top-k images most similar to an uploaded image, embedded like the store's rows (as ``predict`` does)."""
        if not data:
            raise FeatkitError("the upload is empty; send an image file")
        if len(data) > self.settings.max_upload_bytes:
            raise FeatkitError(f"the upload has {len(data):,} bytes; the limit is {self.settings.max_upload_bytes:,}")
        view = self.view(key)
        options = self._search_options(k, task, label)
        with tempfile.TemporaryDirectory(prefix="featkit-upload-") as tmp:
            path = Path(tmp) / "query"
            path.write_bytes(data)
            try:
                load_image(path)  # the extraction guards: a clear reason before any model is loaded
            except ImageLoadError as err:
                raise BadImage(f"cannot use the upload: {err}") from None
            frame = similar(self.current(view), path, exclude_self=False, index=view.index, **options)
        return {"query": {"upload": Path(filename).name[:200]}, "key": view.key, **options,
                "results": self._results(frame)}

    # -- review queues ----------------------------------------------------------------
    def review(self, queue: str, *, task: str | None = None, key: str | None = None) -> dict:
        """A review queue of ``task``: items with the given and the suggested label, and any decision taken."""
        if queue not in QUEUES:
            raise NotFound(choices_message("review queue", queue, QUEUES))
        task, view = self._task(task), self.view(key)
        labels, decisions = self.labels()
        built = self._queue(queue, task, view)
        done = decisions[decisions["task"] == task].set_index("id")
        pos = {i: p for p, i in enumerate(self.collection.ids)}
        items = []
        for item in built["items"]:
            image_id = item["id"]
            decision = None
            if image_id in done.index:
                d = done.loc[image_id]
                decision = {"new": d["new"], "old": d["old"], "user": d["user"], "time": d["time"], "queue": d["queue"]}
            other = item.get("other")
            items.append({**item, "label": labels[task][pos[image_id]],
                          "other_label": labels[task][pos[other]] if other else None, "decision": decision})
        return {**{k: v for k, v in built.items() if k != "items"}, "queue": queue, "task": task, "key": view.key,
                "items": items}

    def _queue(self, queue: str, task: str, view: _View) -> dict:
        run = self.run(task, view.key)
        uses_run = run is not None and queue in ("uncertain", "label-issues", "outliers")
        cache_key = (queue, task, view.key, (str(run.folder), run.stamp) if uses_run else None)
        with self._compute:
            if cache_key not in self._queues:
                builder = {"uncertain": self._uncertain, "label-issues": self._label_issues,
                           "outliers": self._outliers, "duplicates": self._duplicates, "leaks": self._duplicates}
                self._queues[cache_key] = builder[queue](task, view, run, leaks_only=queue == "leaks")
            return self._queues[cache_key]

    def _uncertain(self, task: str, view: _View, run: _Run | None, **_) -> dict:
        if run is None:
            raise NotFound(f"no fit run of task {task!r} on {view.key} under {self.config.root / 'runs'}; "
                           f"run `featkit fit --task {task}` first")
        review = run.report.get("review") or {}
        if review.get("threshold") is not None:
            threshold, source = float(review["threshold"]), f"the review threshold of fit run {run.folder.name}"
        else:
            threshold = DEFAULT_REVIEW_THRESHOLD
            source = (f"default {DEFAULT_REVIEW_THRESHOLD} (fit run {run.folder.name} records no review threshold): "
                      "held-out predictions whose top class has less than half the probability")
        preds = run.predictions
        low = preds[preds["confidence"] < threshold].sort_values("confidence", kind="stable")
        items = [{"id": i, "given": r["label"], "suggested": r["predicted"], "score": round(float(r["confidence"]), 4),
                  "score_name": "confidence", "reason": f"top probability {r['confidence']:.2f} < {threshold:g}"}
                 for i, r in low.head(self.settings.queue_size).iterrows()]
        return {"threshold": threshold, "threshold_source": source, "run": run.folder.name, "total": len(low),
                "items": items}

    def _label_issues(self, task: str, view: _View, run: _Run | None, **_) -> dict:
        """Confident learning on the fit run's out-of-fold probabilities (no model is fitted again); without a
        run, :func:`find_label_issues` computes its own (minutes on large collections)."""
        from featkit.explore.label_issues import LabelIssueSettings, confident_learning, find_label_issues

        if run is not None:
            preds = run.predictions
            classes = list(run.proba_columns)
            result = confident_learning(preds[list(run.proba_columns.values())].to_numpy(float),
                                        preds["label"].to_numpy(), classes)
            frame = result.issues.assign(id=preds.index[result.issues["position"]])
            source = f"out-of-fold probabilities of fit run {run.folder.name} ({len(preds)} held-out images)"
        else:
            report = find_label_issues(view.emb, task, settings=LabelIssueSettings(gallery=False))
            frame, source = report.frame, report.result.proba_source
        items = [{"id": r["id"], "given": r["given"], "suggested": r["suggested"], "score": _plain(r["self_confidence"]),
                  "score_name": "self-confidence",
                  "reason": f"confident learning: {r['suggested']!r} at {r['suggested_confidence']:.2f}"}
                 for r in frame.head(self.settings.queue_size).to_dict(orient="records")]
        return {"source": source, "total": len(frame), "items": items}

    def _outliers(self, task: str, view: _View, run: _Run | None, **_) -> dict:
        from featkit.explore.outliers import OutlierSettings, find_outliers

        report = find_outliers(view.emb, task, settings=OutlierSettings(top=self.settings.queue_size, gallery=False))
        items = []
        for r in report.top_rows.to_dict(orient="records"):
            suggested = None
            if run is not None and r["id"] in run.predictions.index:
                predicted = run.predictions.loc[r["id"], "predicted"]
                suggested = predicted if predicted != r["class"] else None
            items.append({"id": r["id"], "given": r["class"], "suggested": suggested,
                          "score": _plain(r["relative_score"]), "score_name": "× class median",
                          "reason": f"{r['relative_score']:.2f}× its class's median distance to class-mates"})
        return {"method": report.method, "total": len(report.scores), "items": items}

    def _duplicates(self, task: str, view: _View, run, *, leaks_only: bool) -> dict:
        from featkit.explore.duplicates import find_duplicates

        with self._compute:
            cache_key = ("pairs", view.key)
            if cache_key not in self._queues:
                self._queues[cache_key] = {"report": find_duplicates(view.emb)}
            report = self._queues[cache_key]["report"]
        pairs = report.leaks if leaks_only else report.pairs
        pos = {i: p for p, i in enumerate(self.collection.ids)}
        given = self.collection.labels[task]
        items = []
        for r in pairs.head(self.settings.queue_size).itertuples(index=False):
            a, b = given[pos[r.id_a]], given[pos[r.id_b]]
            why = [f"cosine {r.similarity:.4f}"] + ([f"leak across the {r.leak_reason}"] if r.leak_reason else []) \
                + (["labelled differently"] if a != b else [])
            items.append({"id": r.id_a, "other": r.id_b, "given": a, "suggested": b if b != a else None,
                          "score": _plain(r.similarity), "score_name": "cosine", "reason": ", ".join(why)})
        return {"threshold": report.threshold, "total": len(pairs), "items": items}

    # -- corrections --------------------------------------------------------------------
    def add_correction(self, *, id: str, task: str, label: str | None, queue: str = "", user: str | None = None) -> dict:
        """Append one decision (``label`` None or "" = unknown) to the corrections file; returns the row written."""
        if not isinstance(id, str) or not isinstance(task, str):
            raise FeatkitError("a correction needs an image id and a task (strings)")
        if label is not None and not isinstance(label, str):
            raise FeatkitError(f"label must be a string (or null for unknown), got {type(label).__name__}")
        row = self._row(id)
        task = self._task(task)
        if queue and queue not in QUEUES + ("detail", "map"):
            raise FeatkitError(choices_message("queue", queue, QUEUES + ("detail", "map")))
        labels, _ = self.labels()
        entry = make_correction(id=id, task=task, old=labels[task][row], new=label, user=user or self.user,
                                queue=queue)
        append_corrections(self.corrections_file, [entry])
        known = {v for v in labels[task] if v is not None}
        return {**entry, "new_class": bool(entry["new"]) and entry["new"] not in known}

    def corrections(self) -> dict:
        _, decisions = self.labels()
        return {"file": str(self.corrections_file), "corrections": decisions.to_dict(orient="records")}

    def export_manifest(self, ids: list[str]) -> str:
        """The manifest rows of ``ids`` (corrections applied) as CSV text."""
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise FeatkitError("export needs a non-empty list of image ids")
        missing = [i for i in ids if i not in self._ids]
        if missing:
            raise NotFound(f"{len(missing)} id(s) are not in collection {self.collection.name!r}, e.g. {missing[0]!r}")
        frame, _ = corrected_manifest(self.collection, ids=ids)
        return frame.to_csv(index=False)

    # -- files ---------------------------------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        """The file of a collection row, found by id only (a path the client sends is never opened)."""
        self._row(image_id)
        path = self.collection.path(image_id)
        if not path.is_file():
            raise NotFound(f"image {image_id!r} is in the collection but its file is missing")
        return path

    def thumbnail(self, image_id: str) -> Path:
        """A JPEG thumbnail of the image, made once (with the extraction decode guards) and cached on disk."""
        source = self.image_path(image_id)
        size = self.settings.thumb_size
        folder = thumbnail_dir(self.config, size)
        target = folder / (hashlib.sha1(image_id.encode()).hexdigest() + ".jpg")
        if target.exists() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns:
            return target
        try:
            img = load_image(source, draft_size=size)
        except ImageLoadError as err:
            raise BadImage(f"image {image_id!r} cannot be decoded: {err}") from None
        img.thumbnail((size, size))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        img.save(tmp, format="JPEG", quality=85)
        tmp.replace(target)
        return target


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
