"""A dataset plugin's table is checked before the split reads it: what breaks the contract is
one line naming the dataset, the row and the column, never a traceback or a silent misorder."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
from helpers import error_line, registering, run

from twotower import api, testing
from twotower.data.dataset import Dataset
from twotower.errors import TwoTowerError

ROWS = [(str(u), f"item{(u + t) % 5}", 100 * u + t) for u in range(3) for t in range(4)]
ITEMS = pd.DataFrame(
    {
        "item": [f"item{i}" for i in range(5)],
        "title": [f"Title {i}" for i in range(5)],
        "genres": [["Drama"], ["Comedy", "Drama"], [], ["Comedy"], ["Drama"]],
    }
)


def interactions(**columns: list) -> pd.DataFrame:
    frame = pd.DataFrame(ROWS, columns=["user", "item", "timestamp"])
    for name, values in columns.items():
        frame[name] = values
    return frame


def with_items(**columns: list) -> pd.DataFrame:
    items = ITEMS.copy()
    for name, values in columns.items():
        items[name] = values
    return items


def raises() -> Dataset:
    raise OSError("the disk is gone")


def dates() -> list[str]:
    return [f"2020-01-{day:02d}" for day in range(1, len(ROWS) + 1)]


BROKEN: dict[str, tuple[Callable[[], object], str]] = {
    "frame": (lambda: interactions(), "returned a DataFrame, not a twotower.data.dataset.Dataset"),
    "no-timestamp": (
        lambda: Dataset("x", interactions().drop(columns="timestamp")),
        "interactions lack the column(s) timestamp",
    ),
    "missing-user": (
        lambda: Dataset("x", interactions(user=[None, *[r[0] for r in ROWS[1:]]])),
        "row 0, column 'user': empty value",
    ),
    "blank-item": (
        lambda: Dataset("x", interactions(item=[*[r[1] for r in ROWS[:-1]], ""])),
        "column 'item': blank id",
    ),
    "date-strings": (
        lambda: Dataset("x", interactions(timestamp=dates())),
        "row 0, column 'timestamp': '2020-01-01' is not a number",
    ),
    "missing-time": (
        lambda: Dataset("x", interactions(timestamp=[1.0, 2.0, np.nan] + [3.0] * 9)),
        "row 2, column 'timestamp': empty value",
    ),
    "genres-text": (
        lambda: Dataset("x", interactions(), with_items(genres=["Comedy|Drama"] * 5)),
        "row 0, column 'genres': 'Comedy|Drama' is a str, not a list of genre names",
    ),
    "items-no-title": (
        lambda: Dataset("x", interactions(), ITEMS.drop(columns="title")),
        "items lack the column(s) title",
    ),
    "raises": (raises, "could not be loaded (OSError: the disk is gone)"),
}


@pytest.fixture()
def registered() -> Iterator[None]:
    loaders = {name: lambda config, make=make: make() for name, (make, _) in BROKEN.items()}
    loaders["loose"] = lambda config: loose_but_valid()
    loaders["canonical"] = lambda config: Dataset("c", interactions(), ITEMS)
    with registering("register_datasets", loaders, "datasets"):
        yield


@pytest.mark.parametrize("name", BROKEN)
def test_a_dataset_off_its_contract_is_refused_by_name(registered, name):
    with pytest.raises(TwoTowerError) as refused:
        api.prepare(testing.tiny_config(dataset=name))
    message = str(refused.value)
    assert message.startswith(f"dataset {name!r}")
    assert BROKEN[name][1] in message and "\n" not in message


def loose_but_valid() -> Dataset:
    """The tiny table with integer users, numeric text timestamps, tuple and array genres and
    a missing title: each is cast as a file's column would be."""
    frame = interactions(user=[int(r[0]) for r in ROWS], timestamp=[str(r[2]) for r in ROWS])
    genres = [("Drama",), np.array(["Comedy", "Drama"]), None, ["Comedy"], ["Drama"]]
    return Dataset("loose", frame, with_items(genres=genres, title=[*ITEMS["title"][:4], None]))


def test_a_loose_but_castable_table_splits_like_the_canonical_one(registered):
    canonical = api.prepare(testing.tiny_config(dataset="canonical"))
    loose = api.prepare(testing.tiny_config(dataset="loose"))
    assert loose.user_ids == canonical.user_ids and loose.item_ids == canonical.item_ids
    assert all(
        np.array_equal(a, b) for a, b in zip(loose.sequences, canonical.sequences, strict=True)
    )
    assert loose.genres == canonical.genres
    assert loose.titles == [*canonical.titles[:4], ""]


def test_fit_on_a_broken_dataset_is_one_error_line(registered, capsys, tmp_path):
    code, _, err = run(capsys, "fit", "--dataset", "raises", "--artifacts-dir", tmp_path / "a")
    line = error_line(code, err)
    assert line == "error: dataset 'raises' could not be loaded (OSError: the disk is gone)"
