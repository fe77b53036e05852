"""Exact search: one matrix product over the whole catalog, then top-K."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Exclude, select_top_k

FILE = "exact_index.npy"
SCORES_PER_BLOCK = 1 << 24  # 64 MiB of float32 scores


class ExactRetriever:
    """Brute-force inner product; the reference every other retriever is measured against."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    @classmethod
    def build(cls, item_vectors: np.ndarray, **params) -> ExactRetriever:
        return cls(item_vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclude = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        # score a block of queries at a time, so a big catalog never needs a huge matrix
        block = max(1, SCORES_PER_BLOCK // max(1, len(self.vectors)))
        parts = [
            select_top_k(
                queries[start : start + block] @ self.vectors.T,
                k,
                None if exclude is None else exclude[start : start + block],
            )
            for start in range(0, len(queries), block)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def save(self, directory: Path) -> list[Path]:
        path = Path(directory) / FILE
        np.save(path, self.vectors, allow_pickle=False)
        return [path]

    @classmethod
    def load(cls, directory: Path) -> ExactRetriever:
        return cls(np.load(Path(directory) / FILE, allow_pickle=False))
