"""The faiss retriever: twotower's retriever contract for each index type, plus its own options."""

from __future__ import annotations

import numpy as np
import pytest
from twotower import plugins
from twotower.config import TwoTowerConfig
from twotower.errors import TwoTowerError
from twotower.retrievers.exact import ExactRetriever
from twotower.testing import check_retriever

from twotower_faiss import INDEX_FILE, OPTIONS_FILE, FaissOptions, FaissRetriever


def unit_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def recall(ids: np.ndarray, expected: np.ndarray) -> float:
    pairs = zip(ids, expected, strict=True)
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in pairs]))


def test_the_installed_plugin_registers_faiss():
    assert plugins.retrievers().get("faiss") is FaissRetriever
    assert plugins.retrievers().plugin_of("faiss") == "faiss"
    (info,) = [info for info in plugins.plugin_table()[0] if info.name == "faiss"]
    assert info.version == "0.1.0" and info.error is None
    assert info.registered == {"retrievers": ["faiss"]}


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_each_index_type_keeps_the_retriever_contract(index):
    check_retriever("faiss", index=index)


def test_options_come_from_faiss_keys_of_the_config():
    config = TwoTowerConfig(extra={"faiss_index": "hnsw", "faiss_m": 8, "other_x": 1})
    params = plugins.component_options(config, "faiss")
    assert params == {"index": "hnsw", "m": 8}
    retriever = FaissRetriever.build(unit_vectors(50, 8, 0), **params)
    assert retriever.options == FaissOptions(index="hnsw", m=8)


def test_a_misspelled_option_or_index_type_is_an_error():
    unknown = r"unknown option\(s\) faiss_nprob of retriever 'faiss'"
    with pytest.raises(TwoTowerError, match=unknown):
        FaissRetriever.build(unit_vectors(50, 8, 0), nprob=4)
    with pytest.raises(TwoTowerError, match="faiss_index must be one of flat, hnsw, ivf"):
        FaissRetriever.build(unit_vectors(50, 8, 0), index="lsh")


def test_ivf_recall_grows_with_nprobe_and_is_exact_when_every_cell_is_searched():
    items, queries = unit_vectors(2000, 16, 1), unit_vectors(50, 16, 2)
    expected, _ = ExactRetriever.build(items).search(queries, 10)
    recalls = []
    for nprobe in (1, 4, 32):
        ids, _ = FaissRetriever.build(items, index="ivf", nlist=32, nprobe=nprobe).search(
            queries, 10
        )
        recalls.append(recall(ids, expected))
    assert recalls[0] < recalls[1] < recalls[2] == 1.0, recalls


def test_a_short_ivf_answer_falls_back_to_exact_search():
    # one probed cell of 32 cannot hold the 10 items left after excluding the rest
    items, queries = unit_vectors(2000, 16, 3), unit_vectors(3, 16, 4)
    keep = np.random.default_rng(5).choice(2000, size=10, replace=False)
    exclude = [np.setdiff1d(np.arange(2000), keep)] * 3
    ids, scores = FaissRetriever.build(items, index="ivf", nlist=32, nprobe=1).search(
        queries, 10, exclude
    )
    expected, _ = ExactRetriever.build(items).search(queries, 10, exclude)
    np.testing.assert_array_equal(ids, expected)
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_save_writes_prefixed_files_and_load_restores_index_and_options(tmp_path, index):
    items, queries = unit_vectors(300, 8, 6), unit_vectors(5, 8, 7)
    retriever = FaissRetriever.build(items, index=index, nprobe=3, ef_search=20)
    written = retriever.save(tmp_path)
    assert sorted(p.name for p in written) == sorted([INDEX_FILE, OPTIONS_FILE])
    assert all(p.name.startswith("faiss_") for p in tmp_path.iterdir())
    loaded = FaissRetriever.load(tmp_path)
    assert loaded.options == retriever.options and len(loaded) == 300
    before, after = (
        retriever.search(queries, 7, [[0, 1]] * 5),
        loaded.search(queries, 7, [[0, 1]] * 5),
    )
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_load_without_the_files_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        FaissRetriever.load(tmp_path)
    (tmp_path / INDEX_FILE).write_bytes(b"")  # half a save is still missing its options
    with pytest.raises(FileNotFoundError, match=OPTIONS_FILE):
        FaissRetriever.load(tmp_path)
