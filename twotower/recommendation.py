"""The recommendation core, torch-free: one path from a user to ranked items, over any towers.

``twotower.load(artifacts)`` puts it over a trained model's PyTorch towers,
``twotower.serving.load_bundle(bundle)`` over an exported format's runtime.
Only how users are encoded differs between the two; which users and items
exist, what each user has seen, which retriever answers with which options,
and how results are ranked are all here, so both give the same answers.
"""

from __future__ import annotations

import json
import numbers
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as files
from . import plugins
from .config import MAX_THREADS, TwoTowerConfig
from .contracts import Retriever, Towers, capability
from .data.padding import pad_left
from .errors import TwoTowerError, TwoTowerWarning, refused_as

BATCH = 256  # histories encoded in one call of the user tower


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item_id: str
    title: str
    genres: list[str]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recommender:
    """Top-K items for a known user, a batch of them, or an anonymous history.

    ``folder`` is an artifacts folder or a bundle whose ``manifest`` has been
    verified: it holds the id maps, item metadata, histories and item vectors.
    ``towers`` encodes users (``contracts.Towers``). ``retriever`` is the
    default search backend (the fit's ``retriever`` setting when None); any
    query may name another. A retriever is the folder's saved index when it
    has one, else one built from the item vectors with its options (the
    config's ``<name>_*`` settings), once, on first use.

    Every method may be called from many threads at once.
    """

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        config: TwoTowerConfig,
        towers: Towers,
        retriever: str | None = None,
    ):
        self.folder = Path(folder)
        self.identity = files.identity(self.folder)  # a saved index is opened on first use
        self.manifest = manifest
        self.config = config
        self.towers = towers
        self.max_history_len = config.max_history_len
        mappings = read_mappings(self.folder)
        self.user_ids: list[str] = mappings["users"]
        self.item_ids: list[str] = mappings["items"]
        self.user_index = {user: i + 1 for i, user in enumerate(self.user_ids)}
        self.item_index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.items = read_items(self.folder)["items"]
        self.histories: dict[str, list[str]] = files.read_json(
            self.folder,
            files.USER_HISTORIES,
            lambda h: isinstance(h, dict) and all(map(files.str_list, h.values())),
            "{user_id: [item_id, ...]}",
        )
        self.check_histories()
        self.history_indexes = {
            user: self.indexes_of(user, items) for user, items in self.histories.items()
        }
        self.item_vectors = files.load_array(
            self.folder,
            files.ITEM_EMBEDDINGS,
            lambda v: v.ndim == 2 and v.dtype == np.float32,
            "float32 item vectors [items, d]",
        )
        if len(self.item_vectors) != len(self.item_ids) or len(self.items) != len(self.item_ids):
            raise TwoTowerError(
                f"{self.folder}: {files.ITEM_EMBEDDINGS} has {len(self.item_vectors)} rows and "
                f"{files.ITEMS} {len(self.items)} items, but {files.MAPPINGS} lists "
                f"{len(self.item_ids)}: the files are not from one fit"
            )
        # an answer pairs row i's id (mappings.json) with its title and genres (items.json)
        apart = next(
            (i for i, item in enumerate(self.items) if item["item_id"] != self.item_ids[i]), None
        )
        if apart is not None:
            raise TwoTowerError(
                f"{self.folder}: row {apart} of {files.ITEMS} is item "
                f"{self.items[apart]['item_id']!r} but {files.MAPPINGS} lists "
                f"{self.item_ids[apart]!r} there: the files are not from one fit"
            )
        self.default_retriever = config.retriever if retriever is None else retriever
        self._retrievers: dict[str, Retriever] = {}
        self._opening = threading.Lock()
        self.retriever()  # a bad name or index fails now, not at the first query

    def check_histories(self) -> None:
        """One history of at least one item for every user the mappings list, and no other:
        a user's query is their history (the test query, all but its last item)."""
        without = [u for u in self.user_ids if not self.histories.get(u)]
        unmapped = [u for u in self.histories if u not in self.user_index]
        if without or unmapped:
            problem = (
                f"user {without[0]!r} has no history"
                if without
                else f"user {unmapped[0]!r} is not in {files.MAPPINGS}"
            )
            raise TwoTowerError(
                f"{self.folder / files.USER_HISTORIES}: {problem} ({len(without)} mapped user(s) "
                f"without one, {len(unmapped)} unmapped): the files are not from one fit"
            )

    def indexes_of(self, user: str, items: list[str]) -> np.ndarray:
        """Item indexes of a saved history; an item the mappings lack is refused by name."""
        try:
            return np.array([self.item_index[i] for i in items], dtype=np.int64)
        except KeyError as missing:
            raise TwoTowerError(
                f"{self.folder / files.USER_HISTORIES}: user {user!r} has item "
                f"{missing.args[0]!r}, which {files.MAPPINGS} does not list: the files are "
                "not from one fit"
            ) from None

    def retriever(self, name: str | None = None) -> Retriever:
        """The named retriever (the default one when None), opened on first use."""
        name = self.default_retriever if name is None else name
        if not (isinstance(name, str) and name):
            raise TwoTowerError(f"retriever must be a retriever's name, not {name!r}")
        index = self._retrievers.get(name)
        if index is None:
            with self._opening:
                if name not in self._retrievers:
                    files.check_unchanged(self.folder, self.identity, "since it was loaded")
                    self._retrievers[name] = open_retriever(
                        name, self.folder, self.item_vectors, self.config
                    )
                index = self._retrievers[name]
        return index

    def encode(self, users: Sequence[int], histories: Sequence[np.ndarray]) -> np.ndarray:
        """User vectors of ``(users[r], histories[r])`` (user and item indexes)."""
        return encode_histories(self.towers, users, histories, self.max_history_len)

    def search(
        self,
        users: Sequence[int],
        histories: Sequence[np.ndarray],
        k: int,
        exclude_seen: bool = True,
        retriever: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Catalog rows and scores ``[Q, k]``, best first (-1 past the last item)."""
        vectors = require_finite(self.encode(users, histories))
        return top_k(self.retriever(retriever), vectors, histories, k, exclude_seen)

    def recommend(
        self, user_id: Any, k: int = 10, exclude_seen: bool = True, retriever: str | None = None
    ) -> list[Recommendation]:
        """Top-``k`` items for a known user, conditioned on the user's whole history."""
        return self.recommend_batch([raw_id(user_id, "user_id")], k, exclude_seen, retriever)[0]

    def recommend_batch(
        self,
        user_ids: Sequence[Any],
        k: int = 10,
        exclude_seen: bool = True,
        retriever: str | None = None,
    ) -> list[list[Recommendation]]:
        """``recommend`` for many users in one pass through the user tower (none: no lists)."""
        users = [self.known_user(u) for u in id_list(user_ids, "user_ids")]
        histories = [self.history_indexes[self.user_ids[u - 1]] for u in users]
        return self.ranked_lists(users, histories, k, exclude_seen, retriever)

    def recommend_history(
        self,
        item_ids: Sequence[Any],
        k: int = 10,
        exclude_seen: bool = True,
        retriever: str | None = None,
    ) -> list[Recommendation]:
        """Top-``k`` items for an anonymous user (user index 0) given raw item ids, oldest first."""
        item_ids = id_list(item_ids, "item_ids")
        unknown = [i for i in item_ids if i not in self.item_index]
        if unknown:
            raise TwoTowerError(f"unknown item id(s): {', '.join(unknown[:5])}")
        history = np.array([self.item_index[i] for i in item_ids], dtype=np.int64)
        return self.ranked_lists([0], [history], k, exclude_seen, retriever)[0]

    def known_user(self, user_id: Any) -> int:
        index = self.user_index.get(str(user_id))
        if index is None:
            sample = ", ".join(self.user_ids[:3])
            raise TwoTowerError(
                f"unknown user id {str(user_id)!r} ({len(self.user_ids)} known users, "
                f"e.g. {sample})"
            )
        return index

    def ranked_lists(self, users, histories, k, exclude_seen, retriever):
        """One list of recommendations per query; none for no queries."""
        k = check_k(k, len(self.item_ids))
        if not isinstance(exclude_seen, bool | np.bool_):  # "no" would be taken as true
            raise TwoTowerError(f"exclude_seen must be True or False, not {exclude_seen!r}")
        if not users:
            return []
        ids, scores = self.search(users, histories, k, exclude_seen, retriever)
        return [self.ranked(row, row_scores) for row, row_scores in zip(ids, scores, strict=True)]

    def ranked(self, rows: Sequence[int], scores: Sequence[float]) -> list[Recommendation]:
        """One query's search result (catalog rows, best first; -1 = no item)."""
        return [
            Recommendation(
                rank=rank,
                item_id=self.item_ids[row],
                title=self.items[row]["title"],
                genres=list(self.items[row]["genres"]),  # the caller's own: edits stay there
                score=float(score),
            )
            for rank, (row, score) in enumerate(zip(rows, scores, strict=True), start=1)
            if row >= 0
        ]

    def test_queries(self) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Every user's test query (PROTOCOL.md): user indexes, histories without the last
        item (item indexes), and that last item as a catalog row."""
        users, histories, targets = [], [], []
        for user_id, indexes in self.history_indexes.items():
            users.append(self.user_index[user_id])
            histories.append(indexes[:-1])
            targets.append(indexes[-1] - 1)
        return np.array(users, dtype=np.int64), histories, np.array(targets, dtype=np.int64)


# --- what the core, export parity and the bench share ------------------------------------


def saved_config(folder: Path) -> TwoTowerConfig:
    """The ``TwoTowerConfig`` a folder was fitted with (artifacts and bundles both hold it)."""
    path = Path(folder) / files.CONFIG
    values = files.read_json(folder, files.CONFIG, lambda c: isinstance(c, dict), "settings")
    return TwoTowerConfig.from_dict(values, str(path))


def read_mappings(folder: Path) -> dict[str, list[str]]:
    """``mappings.json``: the raw user and item ids, in index order."""
    return files.read_json(
        folder,
        files.MAPPINGS,
        lambda m: (
            isinstance(m, dict)
            and files.str_list(m.get("users"))
            and files.str_list(m.get("items"))
            and bool(m["users"])
            and bool(m["items"])
        ),
        '{"users": [...], "items": [...]} non-empty lists of ids',  # as every fit has
    )


def read_items(folder: Path) -> dict[str, Any]:
    """``items.json``: the genre names and every item's id, title and genres."""
    return files.read_json(
        folder,
        files.ITEMS,
        lambda d: (
            isinstance(d, dict)
            and files.str_list(d.get("genres"))
            and isinstance(d.get("items"), list)
            and all(is_item(item) for item in d["items"])
        ),
        '{"genres": [...], "items": [{"item_id", "title", "genres"}, ...]}',
    )


def is_item(item: Any) -> bool:
    """Whether ``item`` is an entry of ``items.json``."""
    return (
        isinstance(item, dict)
        and isinstance(item.get("item_id"), str)
        and isinstance(item.get("title"), str)
        and files.str_list(item.get("genres"))
    )


def open_retriever(
    name: str, folder: Path, item_vectors: np.ndarray, config: TwoTowerConfig
) -> Retriever:
    """Retriever ``name``'s index saved in ``folder``, else one built with its options;
    probed (``probe``) before it answers anyone."""
    cls = plugins.retrievers().get(name)
    with refused_as(f"the {name} index in {folder} cannot be loaded"):
        try:
            index = cls.load(folder)
        except FileNotFoundError:
            index = None
    saved = index is not None
    if index is None:
        with refused_as(f"retriever {name!r} could not build its index"):
            index = cls.build(item_vectors, **plugins.component_options(config, name, cls))
    index = CheckedRetriever(name, index, len(item_vectors))
    problem = probe(index, item_vectors)
    if problem and saved:
        raise TwoTowerError(
            f"the {name} index in {folder} does not hold the folder's item vectors "
            f"({files.ITEM_EMBEDDINGS}) or does not search them as a retriever must "
            f"({problem}): rebuild it with twotower export or fit"
        )
    if problem:
        raise TwoTowerError(f"retriever {name!r} broke the search contract: {problem}")
    return index


class CheckedRetriever:
    """A retriever whose answers are checked before the core ranks them.

    Every answer must be well formed (``malformed``): arrays of the asked
    shape holding catalog rows, so no plugin's answer becomes an IndexError
    or another item. What costs more to check answer by answer (duplicates,
    seen items, order, short lists) is checked once, by ``probe``, when the
    retriever is opened. A failing search is one error naming the retriever.
    """

    def __init__(self, name: str, index: Retriever, catalog_size: int):
        self.name, self.index, self.catalog_size = name, index, catalog_size

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        with refused_as(f"retriever {self.name!r} failed to search"):
            ids, scores = self.index.search(queries, k, exclude=exclude)
        problem = malformed(ids, scores, len(queries), k, self.catalog_size)
        if problem:
            raise TwoTowerError(f"retriever {self.name!r} broke the search contract: {problem}")
        return ids, scores


class CheckedTowers:
    """A format's towers whose vectors are checked before the core uses them.

    Each call must give float32 ``[B, d]`` for its ``B`` users or items, so
    a format's answer never becomes a wrong ranking or an error deep in
    numpy; a failing call is one error naming the format.
    """

    def __init__(self, format: str, towers: Towers, dim: int):
        self.format, self.towers, self.dim = format, towers, dim

    def encode_users(
        self, user_ids: np.ndarray, history: np.ndarray, history_mask: np.ndarray
    ) -> np.ndarray:
        with refused_as(f"format {self.format!r} failed to encode users"):
            vectors = self.towers.encode_users(user_ids, history, history_mask)
        return self.checked(vectors, len(user_ids), "user")

    def encode_items(self, item_ids: np.ndarray) -> np.ndarray:
        with refused_as(f"format {self.format!r} failed to encode items"):
            vectors = self.towers.encode_items(item_ids)
        return self.checked(vectors, len(item_ids), "item")

    def graphs(self) -> dict[str, Any]:
        """The format's description of its graphs, as ``manifest.json`` records it and
        every load compares it: a JSON object that reads back as the same value."""
        with refused_as(f"format {self.format!r} could not describe its graphs"):
            graphs = self.towers.graphs()
        try:
            same = isinstance(graphs, dict) and json.loads(json.dumps(graphs)) == graphs
        except (TypeError, ValueError):
            same = False
        if not same:
            raise TwoTowerError(
                f"format {self.format!r}: graphs() returned {graphs!r:.200}, not a JSON object "
                "(of objects, lists, strings and numbers) that manifest.json records as it is"
            )
        return graphs

    def checked(self, vectors: Any, rows: int, tower: str) -> np.ndarray:
        shape = (rows, self.dim)
        if isinstance(vectors, np.ndarray):
            if vectors.shape == shape and vectors.dtype == np.float32:
                return vectors
            got = f"a {vectors.dtype} array of shape {vectors.shape}"
        else:
            got = f"a {type(vectors).__name__}"
        raise TwoTowerError(
            f"format {self.format!r}: the {tower} tower returned {got}, "
            f"not float32 vectors of shape {shape}"
        )


PROBES = 8  # queries a retriever answers when it is opened


def probe(index: CheckedRetriever, item_vectors: np.ndarray) -> str | None:
    """What is wrong with ``index``'s answers to a few items' own vectors, or None.

    Each probe excludes its exact top 3, so a retriever that ignores
    ``exclude`` is caught; the first answer's score must be the inner
    product of the item it names, so an index over other vectors is too.
    """
    queries = item_vectors[:PROBES]
    k = min(10, len(item_vectors))
    top = min(3, len(item_vectors) - 1)
    exclude = [np.argpartition(-(item_vectors @ query), top)[:top] for query in queries]
    ids, scores = index.search(queries, k, exclude=exclude)
    problem = misranked(ids, scores, k, len(item_vectors), exclude)
    row = int(ids[0, 0])
    if problem is None and row >= 0:
        truth = float(item_vectors[row] @ queries[0])
        if not np.isclose(scores[0, 0], truth, rtol=1e-3, atol=1e-4):
            problem = f"item row {row} scored {scores[0, 0]:.6g}, its inner product is {truth:.6g}"
    return problem


def malformed(ids: Any, scores: Any, queries: int, k: int, catalog_size: int) -> str | None:
    """What makes a search answer unusable, or None: ``ids[queries, k]`` of an integer
    type, each a catalog row or -1, and ``scores[queries, k]`` of a float type."""
    if not isinstance(ids, np.ndarray) or not isinstance(scores, np.ndarray):
        return f"expected two numpy arrays, got {type(ids).__name__}, {type(scores).__name__}"
    if ids.shape != (queries, k) or scores.shape != (queries, k):
        return f"expected ids and scores of shape {(queries, k)}, got {ids.shape}, {scores.shape}"
    if ids.dtype.kind not in "iu" or scores.dtype.kind != "f":
        return f"expected integer ids and float scores, got {ids.dtype}, {scores.dtype}"
    if ids.size and (ids.min() < -1 or ids.max() >= catalog_size):
        return f"an id outside the catalog's rows 0..{catalog_size - 1}: {ids.min()}..{ids.max()}"
    return None


def misranked(
    ids: np.ndarray,
    scores: np.ndarray,
    k: int,
    catalog_size: int,
    exclude: Sequence[Sequence[int]],
) -> str | None:
    """What is wrong with a well-formed answer (``Retriever.search``), or None: a row at
    most once a query and never an excluded one, best first, -1 only after the last
    item, and ``k`` items while that many are not excluded."""
    found = ids >= 0
    if (found[:, 1:] > found[:, :-1]).any():
        return "an item after a -1 (no item)"
    ordered = np.sort(ids, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        return "an item twice in one query's answer"
    if ((scores[:, 1:] > scores[:, :-1] + 1e-5) & found[:, 1:]).any():
        return "scores not best first"
    for row, rows in enumerate(exclude):
        owed = min(k, catalog_size - len(np.unique(rows)))  # the items left for this query
        if found[row].sum() < owed:
            return f"{found[row].sum()} items for a query that has {owed}"
        if np.isin(ids[row], rows).any():
            return "an excluded (seen) item"
    return None


def prebuilt_indexes(item_vectors: np.ndarray, config: TwoTowerConfig) -> dict[str, Retriever]:
    """An index for every retriever that asks to be built ahead (``prebuilt``), by name,
    with its options: fit and export save them with the folder (``save_indexes``), so
    loading never waits for a build.

    The configured retriever must build; another one that fails is left out with a
    warning (a broken plugin must not break the rest), and builds on first use, or
    says why it cannot, if it is ever asked for."""
    registry = plugins.retrievers()
    indexes = {}
    for name in registry.names():
        if capability(registry.get(name), "prebuilt"):
            try:
                with refused_as(f"retriever {name!r} could not build its index"):
                    options = plugins.component_options(config, name, registry.get(name))
                    indexes[name] = registry.get(name).build(item_vectors, **options)
            except TwoTowerError as problem:
                if name == config.retriever:
                    raise
                warnings.warn(
                    f"{problem}; the folder is written without it", TwoTowerWarning, stacklevel=2
                )
    return indexes


def save_indexes(indexes: dict[str, Retriever], folder: Path) -> None:
    """Save each index into ``folder`` beside the files already there (the last to be
    written, but for the manifest)."""
    for name, index in indexes.items():
        save_index(name, index, Path(folder))


def save_index(name: str, index: Retriever, folder: Path) -> list[Path]:
    """Save retriever ``name``'s index into ``folder``; return the files it wrote.

    A retriever may add files of its own, inside the folder; it may not
    replace or change one that is there (the item vectors, the model): the
    manifest would then vouch for files that no longer match the fit.
    """
    before = {path.name: signature(path) for path in folder.iterdir()}
    with refused_as(f"retriever {name!r} could not save its index"):
        saved = index.save(folder)
    if not isinstance(saved, list | tuple):
        raise TwoTowerError(
            f"retriever {name!r} saved its index but returned {saved!r}, not its files"
        )
    for path in map(Path, saved):
        inside = path.parent.resolve() == folder.resolve() and path.is_file()
        if not inside or path.name == files.MANIFEST:
            raise TwoTowerError(
                f"retriever {name!r} saved {path}, which is not a file of its own in {folder}"
            )
    changed = sorted(n for n, sig in before.items() if signature(folder / n) != sig)
    if changed:
        raise TwoTowerError(
            f"retriever {name!r} wrote over {', '.join(changed)} in {folder}: "
            "an index may only add files of its own"
        )
    return [Path(path) for path in saved]


def signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is written or replaced: inode, size, modification time."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def encode_histories(
    towers: Towers,
    users: Sequence[int],
    histories: Sequence[np.ndarray],
    max_len: int,
    batch: int = BATCH,
) -> np.ndarray:
    """User vectors ``[Q, d]`` of ``(users[r], histories[r])``, ``batch`` at a time
    (``user_inputs``)."""
    parts = [
        towers.encode_users(*inputs) for inputs in user_inputs(users, histories, max_len, batch)
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)  # one batch: no copy


def user_inputs(
    users: Sequence[int], histories: Sequence[np.ndarray], max_len: int, batch: int = BATCH
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(user_ids, history, history_mask)`` of ``batch`` queries at a time, as
    ``Towers.encode_users`` takes them: each history keeps its last ``max_len``
    items, left-padded to the longest in its batch."""
    users = np.asarray(users, dtype=np.int64)
    for start in range(0, len(users), batch):
        ids, mask = pad_left(list(histories[start : start + batch]), max_len)
        yield users[start : start + batch], ids, mask


def top_k(
    index: Retriever,
    vectors: np.ndarray,
    histories: Sequence[np.ndarray],
    k: int,
    exclude_seen: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``index``'s top ``k`` for each vector, its history's items left out unless asked."""
    exclude = [history - 1 for history in histories] if exclude_seen else None
    return index.search(vectors, k, exclude=exclude)


def check_k(k: int, catalog_size: int) -> int:
    """``k`` as an int, at most the catalog size: a huge ``k`` asks for every item, no more."""
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k <= 0:
        raise TwoTowerError(f"k must be a positive integer, not {k!r}")
    return min(int(k), catalog_size)


def check_threads(threads: Any) -> int:
    """A thread count is a whole number from 1 to ``MAX_THREADS``: runtimes read 0 or None
    each their own way (onnxruntime: every core; torch: unchanged or an error), and
    thousands of threads abort the process."""
    whole = isinstance(threads, numbers.Integral) and not isinstance(threads, bool)
    if not whole or not 1 <= threads <= MAX_THREADS:
        raise TwoTowerError(
            f"threads must be a whole number from 1 to {MAX_THREADS}, not {threads!r}"
        )
    return int(threads)


def id_list(ids: Any, what: str) -> list[str]:
    """Raw ids as strings, in order; a single string is refused (not read as a list of
    characters), and so is a set or a mapping: their order is arbitrary, and a history's
    order, like a batch's, is part of the answer. So is a table or array of other than
    one dimension (a DataFrame iterates over its column names)."""
    flat = getattr(ids, "ndim", 1) == 1
    if isinstance(ids, str | bytes | AbstractSet | Mapping) or not isinstance(ids, Iterable):
        flat = False
    if not flat:
        raise TwoTowerError(f"{what} must be a list of ids, not {shown(ids)}")
    return [raw_id(i, f"{what}[{n}]") for n, i in enumerate(ids)]


def raw_id(value: Any, what: str) -> str:
    """A raw id as the data spells it: a string, or an integer (``1`` for "1"). Anything
    else (a list, ``True``, ``None``, ``1.0``) would be looked up by its repr: refused."""
    if isinstance(value, str) or (
        isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ):
        return str(value)
    raise TwoTowerError(f"{what} must be an id (a string or an integer), not {shown(value)}")


def shown(value: Any) -> str:
    """``value``'s type and repr on one line, cut at 80 characters, for an error."""
    text = " ".join(repr(value).split())  # one line, whatever the object's repr
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:80] + '...'}"


def require_finite(vectors: np.ndarray) -> np.ndarray:
    """A non-finite user vector would rank nothing (NaN compares false): refuse it instead."""
    if not np.isfinite(vectors).all():
        raise TwoTowerError("the user tower gave a non-finite vector (NaN or infinite)")
    return vectors
