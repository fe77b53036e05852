"""The artifacts folder: file names, the manifest, atomic writes, verified reads.

A run's files are written into a staging folder beside the target and swap
in only when every file and the manifest are complete, so an interrupted or
failed run never leaves a half-written artifacts folder. ``manifest.json``
lists each file with its sha256; reading verifies them and names the bad file.
Nothing is pickled: tensors go through ``torch.save`` of plain state dicts
(read back with ``weights_only=True``), arrays through ``np.save`` without
pickle, everything else is JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TwoTowerError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.pt"
CONFIG = "config.json"
ITEM_EMBEDDINGS = "item_embeddings.npy"
MAPPINGS = "mappings.json"
ITEMS = "items.json"
USER_HISTORIES = "user_histories.json"
TRAIN_LOG = "train_log.jsonl"
TEST_METRICS = "test_metrics.json"
BASELINE_METRICS = "popularity_metrics.json"

LIBRARIES = ("twotower", "torch", "numpy", "pandas", "hnswlib", "pluggy", "onnx", "onnxruntime")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return versions


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save on a path would append ".npy"
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


@contextlib.contextmanager
def staged_folder(target: Path, kind: str = "artifacts") -> Iterator[Path]:
    """Yield an empty staging folder that replaces ``target`` only if the block succeeds.

    ``target`` must be absent, empty, or a folder this project wrote (it has a
    manifest): a folder of someone else's files is never replaced.
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise TwoTowerError(
            f"{target} exists and is not a twotower {kind} folder; choose another folder"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
        previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
        if target.exists():
            target.rename(previous)
        staging.rename(target)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_manifest(
    folder: Path, extra: dict[str, Any], format_version: int = FORMAT_VERSION
) -> dict[str, Any]:
    """Checksum every file in ``folder`` into ``manifest.json`` (written last)."""
    files = {
        path.name: sha256_of(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {
        "format_version": format_version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        **extra,
        "files": files,
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path, kind: str = "artifacts", format_version: int = FORMAT_VERSION):
    """Read and check ``manifest.json``: the format version and every file's sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        command = "twotower export" if kind == "bundle" else "twotower fit"
        raise TwoTowerError(f"no {kind} folder at {folder}; run `{command}` first")
    if not path.is_file():
        raise TwoTowerError(f"{path} is missing: {folder} is not a complete {kind} folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TwoTowerError(f"{path} is corrupted ({exc})") from None
    found = manifest.get("format_version")
    if found != format_version:
        raise TwoTowerError(
            f"{path}: {kind} format version {found!r}, but this twotower reads version "
            f"{format_version}; re-create them with this version"
        )
    for name, expected in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise TwoTowerError(f"{kind} file {file} is missing")
        if sha256_of(file) != expected:
            raise TwoTowerError(f"{kind} file {file} is corrupted (sha256 does not match manifest)")
    return manifest


def read_json(folder: Path, name: str) -> Any:
    return json.loads((Path(folder) / name).read_text(encoding="utf-8"))


def load_array(folder: Path, name: str) -> np.ndarray:
    return np.load(Path(folder) / name, allow_pickle=False)
