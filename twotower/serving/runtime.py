"""The torch-free runtime over an exported bundle (see exports/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import artifacts as files
from .. import plugins
from ..contracts import Towers
from ..errors import TwoTowerError, refused_as
from ..recommendation import CheckedTowers, Recommender, check_threads, saved_config


def load_bundle(path: str | Path, retriever: str | None = None, threads: int = 1) -> Recommender:
    """The recommendation core over a bundle's exported towers (checksums verified).

    The same core, defaults and options as ``twotower.load``: ``retriever``
    defaults to the fit's ``retriever`` setting, the user tower computes on
    ``threads`` threads. Neither loading nor answering imports torch (for
    the onnx format and the built-in retrievers).
    """
    folder = files.folder_path(path)
    threads = check_threads(threads)
    before = files.identity(folder)
    manifest = files.read_manifest(folder, "bundle")
    towers = load_towers(folder, manifest, threads)
    check_graphs(folder, manifest, towers)
    recommender = Recommender(folder, manifest, saved_config(folder), towers, retriever)
    files.check_unchanged(folder, before)  # every file read is from the folder verified
    return recommender


def load_towers(folder: Path, manifest: dict[str, Any], threads: int) -> Towers:
    """The towers of the format the manifest names. A bundle that format cannot load
    (its manifest names another format than wrote the files) is one clear error."""
    format = manifest["format"]
    names = f"bundle {folder} cannot be loaded as the {format!r} format its manifest.json names"
    with refused_as(names):
        towers = plugins.formats().get(format)().load(folder, threads)
    return CheckedTowers(format, towers, manifest["embedding_dim"])


def check_graphs(folder: Path, manifest: dict[str, Any], towers: Towers) -> None:
    """The loaded graphs must have the inputs and outputs the manifest records."""
    recorded = manifest.get("graphs") or {}
    actual = towers.graphs()
    for tower, description in actual.items():
        if recorded.get(tower) != description:
            file = next((f for f in manifest["files"] if f.startswith(tower)), tower)
            raise TwoTowerError(
                f"bundle graph {folder / file} does not match manifest.json "
                f"(inputs/outputs differ: {description['inputs']} vs "
                f"{(recorded.get(tower) or {}).get('inputs')})"
            )
