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


def test_twotower_plugins_lists_faiss_with_its_version():
    done = subprocess.run(
        [sys.executable, "-m", "twotower.cli", "plugins", "--json", "--all"],
        capture_output=True,
        text=True,
        check=True,
    )
    listed = {p["name"]: p for p in json.loads(done.stdout)["plugins"]}
    assert listed["faiss"]["version"] == "0.1.0"
    assert listed["faiss"]["registered"] == {"retrievers": ["faiss"]}
    assert listed["twotower.builtins.retrievers"]["builtin"]
