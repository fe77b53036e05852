"""Top-K search backends (torch-free: the serving runtime uses them)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

Exclude = Sequence[Collection[int]] | None


def as_ids(ids: Collection[int]) -> np.ndarray:
    """Row numbers as an int64 array, without a Python loop when they already are one."""
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False)
    return np.fromiter(ids, dtype=np.int64, count=len(ids))


def select_top_k(scores: np.ndarray, k: int, exclude: Exclude) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns per row of ``scores[Q, N]``, skipping excluded ones.

    Returns ``(ids[Q, k] int64, scores[Q, k] float32)``; when fewer than
    ``k`` columns are left the tail holds id -1 and score -inf.
    """
    scores = np.array(scores, dtype=np.float32)  # a copy: exclusion writes into it
    if exclude is not None:
        for row, excluded in enumerate(exclude):
            if len(excluded):
                scores[row, as_ids(excluded)] = -np.inf
    width = min(k, scores.shape[1])
    rows = np.arange(len(scores))[:, None]  # indexing by (rows, columns): no take_along_axis
    if width < scores.shape[1]:
        candidates = np.argpartition(-scores, width - 1, axis=1)[:, :width]
    else:
        candidates = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    candidate_scores = scores[rows, candidates]
    # by score, then by id, so ties come out in a stable order
    order = np.lexsort((candidates, -candidate_scores), axis=1)
    ids = candidates[rows, order].astype(np.int64, copy=False)
    top = candidate_scores[rows, order]
    # argpartition keeps an arbitrary few of the items tied at the k-th score:
    # rows with ties left outside are re-ranked in full, lowest ids first
    kth = top[:, -1:]
    tied_outside = (scores == kth).sum(axis=1) > (top == kth).sum(axis=1)
    for row in np.flatnonzero(tied_outside):
        full = np.lexsort((np.arange(scores.shape[1]), -scores[row]))[:width]
        ids[row], top[row] = full, scores[row, full]
    ids[~np.isfinite(top)] = -1
    if width < k:
        ids = np.pad(ids, ((0, 0), (0, k - width)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, k - width)), constant_values=-np.inf)
    return ids, top.astype(np.float32)
