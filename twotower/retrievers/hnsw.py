"""Approximate search with hnswlib (inner-product HNSW graph).

Seen items are excluded by over-fetching ``k + |excluded|`` neighbours and
dropping them, which measured cheaper than hnswlib's filter callback; ``ef``
is raised to the fetch size so the graph can return that many. If the graph
still returns too few (hnswlib raises), the query falls back to exact search
over the stored vectors, so a query is never short of results while the
catalog has enough unexcluded items.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import hnswlib
import numpy as np

from ..schema import at_least, between, option, parse
from . import Exclude, as_ids, select_top_k

INDEX_FILE = "hnsw_index.bin"
PARAMS_FILE = "hnsw_index.json"


@dataclass
class HnswOptions:
    """What ``hnsw_<field>`` settings can change; checked before hnswlib sees them, since
    hnswlib crashes the process on some values (M=0 segfaults, M=1 cannot allocate)."""

    m: int = option(16, between(2, 1024))  # graph degree: more is more accurate, bigger, slower
    ef_construction: int = option(200, at_least(1))  # candidate list while building
    ef: int = option(100, at_least(1))  # candidate list while searching (raised to k + |excluded|)
    seed: int = option(0, at_least(0))
    build_threads: int = option(1, at_least(1))  # 1 builds the same graph every time


class HnswRetriever:
    option_schema = HnswOptions  # what twotower checks `hnsw_*` settings against
    prebuilt = True  # building takes long: fit and export save the index with the folder

    def __init__(self, index: hnswlib.Index, options: HnswOptions):
        self.index = index
        self.options = options
        self._lock = threading.Lock()  # set_ef + knn_query must not interleave

    @classmethod
    def build(cls, item_vectors: np.ndarray, **params) -> HnswRetriever:
        options = parse(HnswOptions, params, spell="hnsw_{}".format, owner="retriever 'hnsw'")
        vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.init_index(
            max_elements=len(vectors),
            M=options.m,
            ef_construction=options.ef_construction,
            random_seed=options.seed,
        )
        index.add_items(vectors, np.arange(len(vectors)), num_threads=options.build_threads)
        index.set_ef(options.ef)
        return cls(index, options)

    def __len__(self) -> int:
        return self.index.get_current_count()

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclude = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each row is searched with its own fetch size and ``ef`` (``k`` + its excluded
        items): a user's answer does not depend on the users asked beside it."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        excluded = [len(e) for e in exclude] if exclude is not None else [0] * len(queries)
        if len(set(excluded)) == 1:  # one fetch size (a single query, say): one search
            return self.search_alike(queries, k, min(len(self), k + excluded[0]), exclude)
        fetches = np.minimum(len(self), k + np.asarray(excluded, dtype=np.int64))
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for fetch in np.unique(fetches):
            rows = np.flatnonzero(fetches == fetch)
            some = None if exclude is None else [exclude[row] for row in rows]
            ids[rows], scores[rows] = self.search_alike(queries[rows], k, int(fetch), some)
        return ids, scores

    def search_alike(
        self, queries: np.ndarray, k: int, fetch: int, exclude: Exclude
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows that fetch ``fetch`` neighbours each, then drop their excluded items."""
        size = len(self)
        try:
            with self._lock:
                self.index.set_ef(max(self.options.ef, fetch))
                labels, distances = self.index.knn_query(queries, k=fetch, num_threads=1)
        except RuntimeError:  # the graph returned fewer than `fetch` neighbours
            vectors = np.asarray(self.index.get_items(np.arange(size)), dtype=np.float32)
            return select_top_k(queries @ vectors.T, k, exclude)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        # one row's excluded items, reset after use; only allocated when there are any
        excluded = np.zeros(size, dtype=bool) if exclude is not None else None
        for row in range(len(queries)):
            found, similarity = labels[row].astype(np.int64), 1.0 - distances[row]
            if exclude is not None and len(exclude[row]):
                # a lookup table over the catalog: cheaper than np.isin's sort for a query
                rows = as_ids(exclude[row])
                excluded[rows] = True
                keep = ~excluded[found]
                excluded[rows] = False
                found, similarity = found[keep], similarity[keep]
            n = min(k, len(found))  # neighbours come sorted, best first
            ids[row, :n], scores[row, :n] = found[:n], similarity[:n]
        return ids, scores

    def save(self, directory: Path) -> list[Path]:
        directory = Path(directory)
        self.index.save_index(str(directory / INDEX_FILE))
        params = {"dim": self.index.dim, "count": len(self), **asdict(self.options)}
        (directory / PARAMS_FILE).write_text(json.dumps(params, indent=2))
        return [directory / INDEX_FILE, directory / PARAMS_FILE]

    @classmethod
    def load(cls, directory: Path) -> HnswRetriever:
        directory = Path(directory)
        params = json.loads((directory / PARAMS_FILE).read_text())
        index = hnswlib.Index(space="ip", dim=params.pop("dim"))
        count = params.pop("count")
        index.load_index(str(directory / INDEX_FILE), max_elements=count)
        options = HnswOptions(**params)
        index.set_ef(options.ef)
        return cls(index, options)
