"""A retriever plugin that breaks its contract is refused in one line naming it, never trusted.

Each broken retriever below is ``ExactRetriever`` with one fault; the core
(``twotower.load(...).recommend``) and fit/export must refuse it rather than
rank duplicates, seen items or ids outside the catalog.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import error_line, registering, run, snapshot, synthetic_fit

import twotower
from twotower import artifacts
from twotower.errors import TwoTowerError
from twotower.retrievers.exact import ExactRetriever


class Duplicates(ExactRetriever):
    def search(self, queries, k, exclude=None):
        ids, scores = super().search(queries, k, exclude)
        ids[:, 1], scores[:, 1] = ids[:, 0], scores[:, 0]
        return ids, scores


class IgnoresExclude(ExactRetriever):
    def search(self, queries, k, exclude=None):
        return super().search(queries, k, None)


class Short(ExactRetriever):
    def search(self, queries, k, exclude=None):
        ids, scores = super().search(queries, k, exclude)
        ids[:, -2:], scores[:, -2:] = -1, -np.inf
        return ids, scores


class OutOfRange(ExactRetriever):
    def search(self, queries, k, exclude=None):
        ids, scores = super().search(queries, k, exclude)
        ids[:, 0] = len(self.vectors) + 100
        return ids, scores


class FloatIds(ExactRetriever):
    def search(self, queries, k, exclude=None):
        ids, scores = super().search(queries, k, exclude)
        return ids.astype(np.float64), scores


class WrongShape(ExactRetriever):
    def search(self, queries, k, exclude=None):
        ids, scores = super().search(queries, k, exclude)
        return ids[:, :-1], scores[:, :-1]


class Unordered(ExactRetriever):
    def search(self, queries, k, exclude=None):
        ids, scores = super().search(queries, k, exclude)
        return ids[:, ::-1].copy(), scores[:, ::-1].copy()


class Raises(ExactRetriever):
    def search(self, queries, k, exclude=None):
        raise RuntimeError("the index is on fire")


class SavesOverTheVectors(ExactRetriever):
    prebuilt = True

    def save(self, directory: Path) -> list[Path]:
        path = Path(directory) / artifacts.ITEM_EMBEDDINGS
        np.save(path, np.zeros_like(self.vectors))
        return [path]


class SavesOutside(ExactRetriever):
    prebuilt = True

    def save(self, directory: Path) -> list[Path]:
        path = Path(directory).parent / "stray.npy"
        np.save(path, self.vectors)
        return [path]


BROKEN = {
    "duplicates": (Duplicates, "an item twice in one query's answer"),
    "ignores-exclude": (IgnoresExclude, "an excluded (seen) item"),
    "short": (Short, "items for a query that has"),
    "out-of-range": (OutOfRange, "an id outside the catalog's rows"),
    "float-ids": (FloatIds, "expected integer ids and float scores"),
    "wrong-shape": (WrongShape, "expected ids and scores of shape"),
    "unordered": (Unordered, "scores not best first"),
    "raises": (Raises, "failed to search (RuntimeError: the index is on fire)"),
}


@pytest.fixture()
def registered() -> Iterator[None]:
    with registering("register_retrievers", {n: cls for n, (cls, _) in BROKEN.items()}, "broken"):
        yield


@pytest.fixture()
def folder(fitted_artifacts, tmp_path) -> Path:
    return Path(shutil.copytree(fitted_artifacts, tmp_path / "artifacts"))


@pytest.mark.parametrize("name", BROKEN)
def test_a_retriever_breaking_its_contract_is_refused_by_name(registered, folder, name):
    recommender = twotower.load(folder)
    user = recommender.user_ids[0]
    assert len(recommender.recommend(user, k=5)) == 5  # the fit's own retriever answers
    with pytest.raises(TwoTowerError) as refused:
        recommender.recommend(user, k=5, retriever=name)
    message = str(refused.value)
    assert message.startswith(f"retriever {name!r} ")
    assert BROKEN[name][1] in message and "\n" not in message


def test_a_retriever_keeping_its_contract_answers_every_query(folder):
    """The checks pass every user's answer from the built-ins, seen items left out or not."""
    recommender = twotower.load(folder)
    for retriever in ("exact", "hnsw"):
        for exclude_seen in (True, False):
            lists = recommender.recommend_batch(
                recommender.user_ids,
                k=len(recommender.item_ids),
                exclude_seen=exclude_seen,
                retriever=retriever,
            )
            for user, items in zip(recommender.user_ids, lists, strict=True):
                seen = set(recommender.histories[user]) if exclude_seen else set()
                assert {item.item_id for item in items} == set(recommender.item_ids) - seen


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (SavesOverTheVectors, f"wrote over {artifacts.ITEM_EMBEDDINGS} in "),
        (SavesOutside, "stray.npy, which is not a file of its own in "),
    ],
)
def test_an_index_that_writes_over_the_folder_or_outside_it_is_refused(
    capsys, tmp_path, cls, message
):
    with registering("register_retrievers", {"rogue": cls}, "rogue"):
        code, _, err = run(capsys, *synthetic_fit(tmp_path / "data"))
    line = error_line(code, err)
    assert line.startswith("error: retriever 'rogue' ") and message in line
    assert not (tmp_path / "data" / "artifacts").exists()


class BuildRaises(ExactRetriever):
    @classmethod
    def build(cls, item_vectors, **params):
        raise ValueError("nope")


@pytest.mark.parametrize("name", ["build-raises", "raises"])
def test_a_fit_whose_retriever_fails_leaves_the_folder_it_would_replace(capsys, tmp_path, name):
    """The new folder must open and its retriever answer before it replaces the old one."""
    data = tmp_path / "data"
    assert run(capsys, *synthetic_fit(data))[0] == 0
    before = snapshot(data / "artifacts")
    components = {"build-raises": BuildRaises, "raises": Raises}
    with registering("register_retrievers", components, "failing"):
        argv = synthetic_fit(data, "--retriever", name, "--seed", "5")
        code, _, err = run(capsys, *argv)
    assert error_line(code, err).startswith(f"error: retriever {name!r} ")
    assert snapshot(data / "artifacts") == before
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(".")) == []


class PrebuiltBuildRaises(BuildRaises):
    prebuilt = True


def test_a_prebuilt_retriever_that_cannot_build_breaks_only_runs_that_use_it(capsys, tmp_path):
    """Every fit builds every prebuilt index; one plugin's failure must not fail the rest."""
    with registering("register_retrievers", {"broken-prebuilt": PrebuiltBuildRaises}, "pb"):
        with pytest.warns(UserWarning, match="'broken-prebuilt' could not build its index"):
            code, _, err = run(capsys, *synthetic_fit(tmp_path / "data"))
        assert code == 0, err
        recommender = twotower.load(tmp_path / "data" / "artifacts")
        assert len(recommender.recommend(recommender.user_ids[0], k=3)) == 3
        argv = synthetic_fit(tmp_path / "other", "--retriever", "broken-prebuilt")
        code, _, err = run(capsys, *argv)
        assert error_line(code, err).startswith("error: retriever 'broken-prebuilt' could not")
    assert not (tmp_path / "other" / "artifacts").exists()
