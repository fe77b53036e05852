"""twotower-faiss: top-K search with FAISS (flat, HNSW or IVF), as a twotower retriever.

This package is also the template for a new retriever plugin. The whole
contract is ``twotower.contracts.Retriever``, registered through
``register_retrievers`` (``twotower/hookspecs.py``):

1. ``pyproject.toml`` declares an entry point in group ``twotower``; after
   ``pip install`` twotower imports this module and calls its hooks.
2. ``register_retrievers(register)`` registers a class under a name
   (``--retriever faiss``).
3. The class has ``build(item_vectors, **params)``, ``search(queries, k,
   exclude)``, ``save(dir)`` and ``load(dir)``; ``params`` are the config's
   ``extra`` keys named ``faiss_*`` (``--set faiss_index=ivf`` -> ``index="ivf"``).
4. ``tests/`` runs ``twotower.testing.check_retriever`` on it.

Never import torch here: the serving runtime looks retrievers up without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from twotower.hookspecs import hookimpl
from twotower.retrievers import Exclude, select_top_k
from twotower.schema import at_least, one_of, option, parse

__version__ = "0.1.0"

# `save` writes these next to twotower's own files, so they carry the plugin's prefix
INDEX_FILE = "faiss_index.bin"
OPTIONS_FILE = "faiss_options.json"
INDEX_TYPES = ("flat", "hnsw", "ivf")


@hookimpl
def register_retrievers(register):
    register("faiss", FaissRetriever)


@dataclass
class FaissOptions:
    """What ``--set faiss_<field>=...`` can change."""

    # flat: exact; hnsw: graph; ivf: k-means cells, `nprobe` searched
    index: str = option("flat", one_of(*INDEX_TYPES))
    # ivf cells; 0 picks about sqrt(N), at most N / 39 (FAISS's advice)
    nlist: int = option(0, at_least(0))
    # ivf cells searched per query: more is more accurate and slower
    nprobe: int = option(8, at_least(1))
    # hnsw graph degree: more is more accurate, bigger and slower to build
    m: int = option(32, at_least(2))
    # hnsw candidate list while searching (raised to the fetch size)
    ef_search: int = option(64, at_least(1))

    @classmethod
    def from_params(cls, params: dict) -> FaissOptions:
        """Options from ``build``'s params; a misspelled or out-of-range one is an error."""
        return parse(cls, params, spell="faiss_{}".format, owner="retriever 'faiss'")


def make_index(vectors: np.ndarray, options: FaissOptions) -> faiss.Index:
    """An inner-product index of ``options.index`` type holding ``vectors`` (row = id)."""
    count, dim = vectors.shape
    if options.index == "flat":
        index = faiss.IndexFlatIP(dim)
    elif options.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options.m, faiss.METRIC_INNER_PRODUCT)
    else:
        nlist = options.nlist or max(1, min(round(count**0.5), count // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add(vectors)
    return index


class FaissRetriever:
    """A FAISS index over the item vectors; ids are row numbers of ``item_vectors``.

    Seen items are excluded by over-fetching ``k + |excluded|`` neighbours and
    dropping them. An approximate index may still come back short (IVF only
    looks in ``nprobe`` cells); such a query is answered exactly instead, so a
    query is never short while the catalog has enough items left.
    """

    option_schema = FaissOptions  # twotower checks `--set faiss_*` against it before a run

    def __init__(self, index: faiss.Index, options: FaissOptions):
        self.index = index
        self.options = options
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.make_direct_map()  # lets the exact fallback read the vectors back

    @classmethod
    def build(cls, item_vectors: np.ndarray, **params) -> FaissRetriever:
        options = FaissOptions.from_params(params)
        vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        return cls(make_index(vectors, options), options)

    def __len__(self) -> int:
        return self.index.ntotal

    def search_parameters(self, fetch: int) -> faiss.SearchParameters | None:
        """Per-call settings: thread-safe, unlike changing the index's own."""
        if self.options.index == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.options.ef_search, fetch))
        if self.options.index == "ivf":
            return faiss.SearchParametersIVF(nprobe=self.options.nprobe)
        return None

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclude = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        size = len(self)
        banned = [
            np.unique(np.fromiter(excluded, dtype=np.int64))
            for excluded in (exclude if exclude is not None else [()] * len(queries))
        ]
        fetch = min(size, k + max((len(b) for b in banned), default=0))
        scores, labels = self.index.search(queries, fetch, params=self.search_parameters(fetch))

        ids = np.full((len(queries), k), -1, dtype=np.int64)  # -1 / -inf where nothing is left
        top = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for row, excluded in enumerate(banned):
            keep = (labels[row] >= 0) & ~np.isin(labels[row], excluded)
            found, similarity = labels[row][keep][:k], scores[row][keep][:k]  # best first
            if len(found) < min(k, size - len(excluded)):  # the index came back short
                exact_ids, exact_scores = select_top_k(
                    queries[row : row + 1] @ self.index.reconstruct_n(0, size).T, k, [excluded]
                )
                found, similarity = exact_ids[0], exact_scores[0]
            ids[row, : len(found)], top[row, : len(found)] = found, similarity
        return ids, top

    def save(self, directory: Path) -> list[Path]:
        directory = Path(directory)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / OPTIONS_FILE).write_text(json.dumps(asdict(self.options), indent=2))
        return [directory / INDEX_FILE, directory / OPTIONS_FILE]

    @classmethod
    def load(cls, directory: Path) -> FaissRetriever:
        """Raises FileNotFoundError when the files are absent: twotower then calls ``build``."""
        directory = Path(directory)
        for name in (INDEX_FILE, OPTIONS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(directory / name)
        options = FaissOptions(**json.loads((directory / OPTIONS_FILE).read_text()))
        return cls(faiss.read_index(str(directory / INDEX_FILE)), options)
