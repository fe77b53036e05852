"""The installed plugin through the command line: fit, then recommend with --retriever faiss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from twotower.cli import main

TINY = ["--set", "synthetic_num_users=40", "--set", "synthetic_num_items=30"]
SMALL = ["--max-history-len", "6", "--embedding-dim", "16", "--num-layers", "1", "--epochs", "1"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """A one-epoch fit on the tiny synthetic data, with faiss options saved in its config."""
    data_dir = tmp_path_factory.mktemp("faiss-cli")
    argv = ["fit", "--dataset", "synthetic", *TINY, *SMALL, "--data-dir", str(data_dir)]
    assert main([*argv, "--set", "faiss_index=hnsw", "--no-progress", "--json"]) == 0
    return data_dir / "artifacts"


def recommend(capsys, artifacts: Path, retriever: str) -> list[str]:
    argv = ["recommend", "--artifacts-dir", str(artifacts), "--user-id", "1", "--k", "5"]
    capsys.readouterr()
    assert main([*argv, "--retriever", retriever, "--json"]) == 0
    return [item["item_id"] for item in json.loads(capsys.readouterr().out)["items"]]


def test_recommend_with_the_faiss_retriever_matches_exact_search(capsys, artifacts):
    found = recommend(capsys, artifacts, "faiss")
    assert len(found) == 5
    assert found == recommend(capsys, artifacts, "exact")  # 30 items: HNSW finds the true top 5


def test_both_entry_points_build_faiss_with_the_fit_s_options(artifacts, tmp_path):
    """Neither folder holds a faiss index: each builds one with the saved `faiss_*` settings."""
    from twotower import load
    from twotower.export.bundle import export_bundle
    from twotower.serving import load_bundle

    bundle, _ = export_bundle(artifacts, tmp_path / "bundle", format="onnx")
    trained, served = load(artifacts, retriever="faiss"), load_bundle(bundle, retriever="faiss")
    for recommender in (trained, served):
        assert recommender.retriever().index.options.index == "hnsw"
        assert not list(recommender.folder.glob("faiss_*"))
    user = trained.user_ids[0]
    assert [r.item_id for r in served.recommend(user, k=5)] == [
        r.item_id for r in trained.recommend(user, k=5)
    ]


def test_twotower_plugins_lists_faiss_with_its_package_and_version():
    done = subprocess.run(
        [sys.executable, "-m", "twotower.cli", "plugins", "--json", "--all"],
        capture_output=True,
        text=True,
        check=True,
    )
    listed = {p["name"]: p for p in json.loads(done.stdout)["plugins"]}
    assert listed["faiss"]["version"] == "0.1.0"
    assert listed["faiss"]["distribution"] == "twotower-faiss"  # the package pip installed
    assert listed["faiss"]["registered"] == {"retrievers": ["faiss"]}
    assert listed["twotower.builtins.retrievers"]["builtin"]
