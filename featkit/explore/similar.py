"""Search by image: the rows of a store group most similar to an image, with cosine scores.

The query is an image of the collection (its id or its path), a new image file
(embedded in the group's feature space through the same runtime as ``featkit predict``:
same backbone, weights, preprocessing and TTA), or an embedding vector. The search is
exact — one matrix-vector product over L2-normalised rows — which stays well under a
second up to about a million rows on a CPU; beyond that an approximate index (FAISS,
hnswlib) would take over.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.embeddings import Embeddings
from featkit.errors import FeatkitError
from featkit.explore.neighbors import l2_normalize


class SimilarityIndex:
    """L2-normalised rows of ``emb`` held once, for repeated exact cosine queries."""

    def __init__(self, emb: Embeddings) -> None:
        self.emb = emb
        self.Xn = l2_normalize(emb.X)
        self._order = np.argsort(emb.ids, kind="stable")  # ids stay a numpy array: lookups by binary search

    def row_of(self, image_id: str) -> int | None:
        if not len(self._order):
            return None
        at = min(int(np.searchsorted(self.emb.ids, str(image_id), sorter=self._order)), len(self._order) - 1)
        row = int(self._order[at])
        return row if self.emb.ids[row] == str(image_id) else None

    def vector(self, query) -> tuple[np.ndarray, int | None]:
        """(query vector, its row when the query is a row of the group)."""
        if isinstance(query, np.ndarray) and query.ndim == 1:
            if len(query) != self.Xn.shape[1]:
                raise FeatkitError(f"query vector has {len(query)} dims; {self.emb.key} has {self.Xn.shape[1]}")
            return query.astype(np.float32), None
        image_id = resolve_query(self.emb, query)
        if image_id is not None:
            row = self.row_of(image_id)
            if row is None:
                raise FeatkitError(f"image {image_id!r} is in the collection but has no embedding in {self.emb.key} "
                                   "(it failed to decode, or extract has not reached it)")
            return self.Xn[row], row
        features = embed_files(self.emb, [Path(query)])
        if features[0] is None:
            raise FeatkitError(f"cannot embed {query}: {features[1]}")
        return features[0], None

    def query(self, vector: np.ndarray, k: int, *, mask: np.ndarray | None = None,
              exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the ``k`` most similar rows, best first; ``mask`` limits the candidates."""
        if k < 1:
            raise FeatkitError(f"k must be at least 1, got {k}")
        scores = self.Xn @ l2_normalize(vector[None, :])[0]
        allowed = np.ones(len(scores), bool) if mask is None else np.asarray(mask, bool).copy()
        if exclude is not None:
            allowed[exclude] = False
        candidates = np.flatnonzero(allowed)
        if not len(candidates):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        k = min(k, len(candidates))
        top = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        order = np.lexsort((top, -scores[top]))
        return top[order], scores[top[order]]


def resolve_query(emb: Embeddings, query) -> str | None:
    """The image id ``query`` names in the collection (an id, or a path to one of its images); None otherwise."""
    text = str(query)
    manifest = emb.manifest
    if manifest.contains([text])[0]:
        return text
    path = Path(query)
    if not path.exists():
        raise FeatkitError(f"{text!r} is neither an image id of collection {manifest.name!r} nor an existing file")
    from featkit.predict import collection_ids

    found = collection_ids(manifest, [Path(os.path.abspath(path))])
    return found.get(0)


def embed_files(emb: Embeddings, paths: list[Path]) -> tuple[np.ndarray | None, str | None]:
    """The first file's embedding in ``emb``'s feature space (or None and the reason it failed)."""
    from featkit.modelio import feature_space
    from featkit.predict import embed_in_space

    feats, errors = embed_in_space(feature_space(emb.meta), paths, config=emb.manifest.config)
    if 0 in errors:
        return None, errors[0]
    return feats[0], None


def candidate_mask(emb: Embeddings, *, task: str | None = None, label: str | None = None) -> np.ndarray | None:
    """Rows labelled for ``task`` (with ``label`` when given); None when nothing is filtered."""
    if label is not None and task is None:
        if len(emb.tasks) != 1:
            raise FeatkitError(f"label {label!r} needs a task; pass task= one of {', '.join(emb.tasks)}")
        task = emb.tasks[0]
    if task is None:
        return None
    labels = emb.labels(task)
    if label is None:
        return np.array([v is not None for v in labels], dtype=bool)
    classes = sorted({str(v) for v in labels if v is not None})
    if label not in classes:
        raise FeatkitError(f"label {label!r} is not a class of task {task!r}; valid choices: {', '.join(classes)}")
    return np.array([v == label for v in labels], dtype=bool)


def results_frame(emb: Embeddings, rows: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"rank": np.arange(1, len(rows) + 1), "id": emb.ids[rows].astype(str),
                          "score": np.round(scores.astype(np.float64), 6),
                          "path": [str(p) for p in emb.paths(rows)]})
    for task in emb.tasks:
        frame[task] = emb.labels(task)[rows]
    return frame


def similar(emb: Embeddings, query, *, k: int = 10, task: str | None = None, label: str | None = None,
            exclude_self: bool = True, index: SimilarityIndex | None = None) -> pd.DataFrame:
    """The ``k`` rows of ``emb`` most similar to ``query``: rank, id, score (cosine), path and each task's label.

    ``task``/``label`` keep only candidates labelled for that task (and with that label);
    a query that is itself a row is left out of its own results unless ``exclude_self`` is False.
    """
    index = index or SimilarityIndex(emb)
    vector, row = index.vector(query)
    rows, scores = index.query(vector, k, mask=candidate_mask(emb, task=task, label=label),
                               exclude=row if exclude_self else None)
    return results_frame(emb, rows, scores)
