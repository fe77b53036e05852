"""The torch-free serving runtime over an exported bundle (see exports/README.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts as files
from .. import plugins
from ..data.padding import pad_left
from ..errors import TwoTowerError
from ..recommendation import (
    Recommendation,
    check_k,
    id_list,
    ranked,
    require_finite,
    unknown_user,
)


class Bundle:
    """Encode a user with the exported user tower, search the item index, map ids back.

    Every method may be called from many threads at once: the onnxruntime
    sessions and the retrievers are thread-safe and nothing here mutates state.
    """

    def __init__(self, folder: str | Path, retriever: str = "hnsw", threads: int = 1):
        self.folder = Path(folder)
        self.manifest = files.read_manifest(self.folder, "bundle")
        self.max_history_len = int(self.manifest["max_history_len"])
        self.towers = plugins.formats().get(self.manifest["format"])().load(self.folder, threads)
        check_graphs(self.folder, self.manifest, self.towers)
        mappings = files.read_json(self.folder, files.MAPPINGS)
        self.user_ids: list[str] = mappings["users"]
        self.item_ids: list[str] = mappings["items"]
        self.user_index = {user: i + 1 for i, user in enumerate(self.user_ids)}
        self.item_index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.items = files.read_json(self.folder, files.ITEMS)["items"]
        histories = files.read_json(self.folder, files.USER_HISTORIES)
        self.histories = {
            user: np.array([self.item_index[i] for i in items], dtype=np.int64)
            for user, items in histories.items()
        }
        self.item_vectors = files.load_array(self.folder, files.ITEM_EMBEDDINGS)
        self.retriever = open_retriever(self.folder, retriever, self.item_vectors)

    def encode(self, users: Sequence[int], histories: Sequence[np.ndarray]) -> np.ndarray:
        ids, mask = pad_left(list(histories), self.max_history_len)
        return self.towers.encode_users(np.asarray(users, dtype=np.int64), ids, mask)

    def _search(self, users, histories, k: int, exclude_seen: bool) -> list[list[Recommendation]]:
        k = check_k(k, len(self.item_ids))
        if not users:
            return []
        vectors = require_finite(self.encode(users, histories))
        exclude = [h - 1 for h in histories] if exclude_seen else None
        ids, scores = self.retriever.search(vectors, k, exclude=exclude)
        return [
            ranked(row_ids, row_scores, self.item_ids, self.items)
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def _user(self, user_id: Any) -> tuple[int, np.ndarray]:
        user_id = str(user_id)
        if user_id not in self.user_index:
            raise unknown_user(user_id, self.user_ids)
        return self.user_index[user_id], self.histories[user_id]

    def recommend(self, user_id: Any, k: int = 10, exclude_seen: bool = True):
        """Top-``k`` items for a known user, conditioned on the user's whole history."""
        return self.recommend_batch([user_id], k, exclude_seen)[0]

    def recommend_batch(self, user_ids: Sequence[Any], k: int = 10, exclude_seen: bool = True):
        """``recommend`` for many users in one pass through the user tower (none: no lists)."""
        found = [self._user(u) for u in id_list(user_ids, "user_ids")]
        users, histories = [u for u, _ in found], [h for _, h in found]
        return self._search(users, histories, k, exclude_seen)

    def recommend_history(
        self, item_ids: Sequence[Any], k: int = 10, exclude_seen: bool = True
    ) -> list[Recommendation]:
        """Top-``k`` items for an anonymous user given raw item ids, oldest first."""
        item_ids = id_list(item_ids, "item_ids")
        unknown = [i for i in item_ids if i not in self.item_index]
        if unknown:
            raise TwoTowerError(f"unknown item id(s): {', '.join(unknown[:5])}")
        history = np.array([self.item_index[i] for i in item_ids], dtype=np.int64)
        return self._search([0], [history], k, exclude_seen)[0]


def open_retriever(folder: Path, name: str, item_vectors: np.ndarray):
    """The bundle's saved index for ``name``; exact search is built from the vectors."""
    cls = plugins.retrievers().get(name)
    try:
        return cls.load(folder)
    except FileNotFoundError:
        return cls.build(item_vectors)


def check_graphs(folder: Path, manifest: dict[str, Any], towers) -> None:
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


def load_bundle(path: str | Path, retriever: str = "hnsw", threads: int = 1) -> Bundle:
    """Open an exported bundle (checksums verified) for torch-free serving."""
    return Bundle(path, retriever, threads)
