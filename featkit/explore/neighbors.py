"""Cosine neighbours in blocks: never an n x n matrix in memory.

Embeddings are L2-normalised once; each block of rows is multiplied by the whole
set (``block x n`` floats, sized to ``max_block_bytes``). Neighbours can skip rows
of the same group (several photos of one object are not independent evidence).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

MAX_BLOCK_BYTES = 128 * 2**20


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); all-zero rows stay zero."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, np.float32(1e-12))


def block_rows(n_cols: int, max_block_bytes: int = MAX_BLOCK_BYTES) -> int:
    return int(max(1, min(8192, max_block_bytes // (4 * max(n_cols, 1)))))


def iter_similarity_blocks(Xn: np.ndarray, Yn: np.ndarray | None = None, *,
                           max_block_bytes: int = MAX_BLOCK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, Xn[start:stop] @ Yn.T)`` for consecutive blocks of rows."""
    Yn = Xn if Yn is None else Yn
    step = block_rows(len(Yn), max_block_bytes)
    for start in range(0, len(Xn), step):
        yield start, Xn[start:start + step] @ Yn.T


def cosine_knn(X: np.ndarray, k: int, *, codes: np.ndarray | None = None,
               max_block_bytes: int = MAX_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar other rows of each row: ``(index, similarity)``, both ``(n, k)``.

    ``codes`` (one integer per row, e.g. :func:`group_codes`) excludes rows sharing
    the code, itself included; without it only the row itself is excluded. Rows with
    fewer than ``k`` candidates get index -1 and similarity -inf in the missing slots.
    """
    Xn = l2_normalize(X)
    n = len(Xn)
    codes = np.arange(n) if codes is None else np.asarray(codes)
    k_eff = max(0, min(k, n - 1))
    index = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    if k_eff == 0:
        return index, sims
    for start, S in iter_similarity_blocks(Xn, max_block_bytes=max_block_bytes):
        rows = np.arange(start, start + len(S))
        S[codes[rows][:, None] == codes[None, :]] = -np.inf
        S[np.arange(len(S)), rows] = -np.inf
        part = np.argpartition(-S, k_eff - 1, axis=1)[:, :k_eff]
        vals = np.take_along_axis(S, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        part, vals = np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)
        part[~np.isfinite(vals)] = -1
        index[rows, :k_eff] = part
        sims[rows, :k_eff] = vals
    return index, sims


def pairs_above(X: np.ndarray, threshold: float, *, max_pairs: int | None = None,
                max_block_bytes: int = MAX_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Pairs ``i < j`` with cosine similarity >= ``threshold``, most similar first.

    Returns ``(i, j, similarity, truncated)``; with ``max_pairs`` only that many of the
    most similar pairs are kept (``truncated`` says some were dropped).
    """
    Xn = l2_normalize(X)
    found_i, found_j, found_s = [], [], []
    kept = 0
    truncated = False
    step = block_rows(len(Xn), max_block_bytes)
    for start in range(0, len(Xn), step):
        S = Xn[start:start + step] @ Xn[start:].T  # only columns j >= start can be above the diagonal
        r, c = np.nonzero(S >= threshold)
        found_s_block = S[r, c]
        r, c = r + start, c + start
        upper = c > r
        r, c = r[upper], c[upper]
        if not len(r):
            continue
        found_i.append(r)
        found_j.append(c)
        found_s.append(found_s_block[upper])
        kept += len(r)
        if max_pairs is not None and kept > 4 * max_pairs:  # keep memory bounded while scanning
            i, j, s = (np.concatenate(a) for a in (found_i, found_j, found_s))
            top = np.argsort(-s, kind="stable")[:max_pairs]
            found_i, found_j, found_s, kept, truncated = [i[top]], [j[top]], [s[top]], max_pairs, True
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float32), False
    i, j, s = (np.concatenate(a) for a in (found_i, found_j, found_s))
    order = np.lexsort((j, i, -s))
    if max_pairs is not None and len(order) > max_pairs:
        order, truncated = order[:max_pairs], True
    return i[order], j[order], s[order], truncated
