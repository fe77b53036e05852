"""The bundle a server answers from, and its replacement without downtime.

A request reads ``LiveBundle.current`` once and answers from that object to
the end, so a reload that swaps ``current`` (one reference assignment, atomic
in Python) never changes a request in flight: it finishes on the old bundle,
which is freed when the last such request drops it. A new bundle is loaded,
verified (checksums, graphs) and asked two queries before it is swapped in;
one that fails any of that is refused and the old one keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import folder_path
from ..recommendation import Recommender
from .runtime import load_bundle


@dataclass(frozen=True)
class Loaded:
    """One loaded, checked bundle and what identifies it."""

    recommender: Recommender
    path: Path
    version: str  # sha256 of the manifest it was loaded with: changes with every export
    loaded_at: float  # Unix time

    def describe(self) -> dict[str, Any]:
        manifest = self.recommender.manifest
        return {
            "bundle": str(self.path),
            "version": self.version,
            "format": manifest["format"],
            "quantization": manifest.get("quantization"),
            "created": manifest.get("created"),
            "retriever": self.recommender.default_retriever,
            "users": len(self.recommender.user_ids),
            "items": len(self.recommender.item_ids),
            "loaded_at": self.loaded_at,
        }


def manifest_version(manifest: dict[str, Any]) -> str:
    """A short, stable id of a bundle: the sha256 of its manifest, which lists every file's."""
    text = json.dumps(manifest, sort_keys=True).encode("utf-8")
    return hashlib.sha256(text).hexdigest()[:16]


def open_checked(path: Path, retriever: str | None, threads: int) -> Loaded:
    """Load a bundle and ask it one known user and one anonymous history (``TwoTowerError``
    when anything fails), so a bundle that loads but cannot answer never serves."""
    recommender = load_bundle(path, retriever=retriever, threads=threads)
    recommender.recommend(recommender.user_ids[0], k=1)
    recommender.recommend_history(recommender.item_ids[:1], k=1)
    return Loaded(recommender, Path(path), manifest_version(recommender.manifest), time.time())


class LiveBundle:
    """The bundle being served, and how to reload it from its folder.

    A reload reads the folder the server was started with: `twotower export
    --out` that folder (which replaces it atomically), then reload.
    """

    def __init__(self, path: Path, retriever: str | None = None, threads: int = 1):
        self.path = folder_path(path)
        self.retriever = retriever
        self.threads = threads
        self._reloading = threading.Lock()  # one reload at a time; requests never wait on it
        self.current = open_checked(self.path, retriever, threads)

    def check(self) -> Loaded:
        """The folder's bundle, loaded and checked, not swapped in (``TwoTowerError`` if bad)."""
        return open_checked(self.path, self.retriever, self.threads)

    def reload(self) -> tuple[Loaded, Loaded]:
        """Load the folder again, check it, swap it in: ``(old, new)``; ``TwoTowerError``
        (nothing swapped) when the folder holds no good bundle."""
        with self._reloading:
            new = self.check()
            old, self.current = self.current, new
            return old, new
