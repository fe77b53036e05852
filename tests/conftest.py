"""Shared fixtures: plugin isolation and the (optional) real MovieLens-100K data."""

from __future__ import annotations

import os

# Installed third-party plugins must never leak into the tests (see twotower/plugins.py);
# set before anything builds the plugin manager.
os.environ["TWOTOWER_PLUGINS"] = ""

from pathlib import Path

import pytest
from helpers import synthetic_fit

from twotower.cli import main
from twotower.data import movielens
from twotower.export.bundle import export_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


def find_ml100k() -> Path | None:
    """The real ML-100K folder: $TWOTOWER_ML100K_DIR, else ./data/ml-100k; None when absent."""
    candidates = []
    if os.environ.get("TWOTOWER_ML100K_DIR"):
        candidates.append(Path(os.environ["TWOTOWER_ML100K_DIR"]))
    candidates.append(REPO_ROOT / "data" / "ml-100k")
    for candidate in candidates:
        folder = movielens.find_local(candidate) if candidate.is_dir() else None
        if folder is not None:
            return folder
    return None


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    folder = find_ml100k()
    if folder is None:
        pytest.skip("real MovieLens-100K not found (set TWOTOWER_ML100K_DIR or use ./data/ml-100k)")
    return folder


@pytest.fixture(scope="session")
def ml100k(ml100k_dir):
    """The real dataset, parsed once per session."""
    return movielens.read_folder(ml100k_dir)


@pytest.fixture(scope="session")
def reference_targets() -> Path:
    """PROTOCOL.md's reference split (../shared/reference from the repo root)."""
    path = REFERENCE_DIR / "ml100k_split_targets.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def fitted_artifacts(tmp_path_factory) -> Path:
    """Artifacts of a one-epoch fit on the tiny synthetic data, made once; tests copy them."""
    data_dir = tmp_path_factory.mktemp("fitted") / "data"
    assert main(synthetic_fit(data_dir)) == 0
    return data_dir / "artifacts"


@pytest.fixture(scope="session")
def exported_bundle(fitted_artifacts, tmp_path_factory) -> Path:
    """The ONNX bundle of ``fitted_artifacts``, made once; tests copy it."""
    folder, _ = export_bundle(fitted_artifacts, tmp_path_factory.mktemp("exported") / "bundle")
    return folder
