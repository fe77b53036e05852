"""The table every dataset plugin returns, and its validation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import NoReturn

import numpy as np
import pandas as pd

from ..errors import TwoTowerError

INTERACTION_COLUMNS = ("user", "item", "timestamp")  # plus optional "rating"
ITEM_COLUMNS = ("item", "title", "genres")


@dataclass
class Dataset:
    """Interactions plus optional item metadata, with raw ids as strings.

    ``interactions``: columns ``user`` (str), ``item`` (str), ``timestamp``
    (int64, or float64 for fractional seconds; only its order is used), and
    optionally ``rating`` (float64), in source order.
    ``items``: columns ``item`` (str), ``title`` (str), ``genres`` (list of
    str); ``None`` when the source has no metadata (the item tower then uses
    item IDs only).
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame | None = None


TIMESTAMP_LIMIT = 2.0**63  # beyond int64 no unit of time gives a meaningful order


def to_number(values: pd.Series, column: str, source: str, row_offset: int = 2) -> pd.Series:
    """Parse a column as finite numbers or raise one line naming the first bad row.

    ``row_offset`` turns a 0-based data index into the row a person sees
    (2 for a CSV with a header line).
    """
    parsed = pd.to_numeric(values, errors="coerce")
    bad = ~np.isfinite(parsed.to_numpy(dtype="float64", na_value=np.nan))
    if bad.any():
        position = first(bad)
        value, number = values.iloc[position], parsed.iloc[position]
        if pd.isna(value):
            problem = "empty value"
        elif pd.isna(number):
            problem = f"{value!r} is not a number"
        else:
            problem = f"{value!r} is not a finite number"
        bad_row(source, position + row_offset, column, problem)
    return parsed


class BadRow(TwoTowerError):
    """A bad value at a row of a table: one line naming the source, row and column."""

    def __init__(self, source: str, row: int, column: str, problem: str):
        super().__init__(f"{source}: row {row}, column {column!r}: {problem}")
        self.source, self.row, self.column, self.problem = source, row, column, problem

    def at(self, row: int) -> BadRow:
        """The same problem at another row number (a file's line, say)."""
        return BadRow(self.source, row, self.column, self.problem)


def bad_row(source: str, row: int, column: str, problem: str) -> NoReturn:
    raise BadRow(source, row, column, problem)


def normalise_interactions(
    frame: pd.DataFrame, source: str, has_rating: bool, row_offset: int = 2
) -> pd.DataFrame:
    """Cast a frame with columns user, item, timestamp[, rating] to the canonical dtypes."""
    if frame.empty:
        raise TwoTowerError(f"{source}: no interactions")
    out = pd.DataFrame(
        {
            "user": as_id(frame["user"], "user", source, row_offset),
            "item": as_id(frame["item"], "item", source, row_offset),
            "timestamp": _as_timestamp(frame["timestamp"], source, row_offset),
        }
    )
    if has_rating:
        out["rating"] = to_number(frame["rating"], "rating", source, row_offset).astype("float64")
    return out.reset_index(drop=True)


def as_id(values: pd.Series, column: str, source: str, row_offset: int) -> pd.Series:
    """Ids as stripped strings; a whole number in a float column reads as an integer
    (12.0 -> "12", as the file meant), each value on its own: a 1.5 beside it stays "1.5"
    and does not make the others "12.0"."""
    missing = values.isna()
    if missing.any():
        bad_row(source, first(missing) + row_offset, column, "empty value")
    if pd.api.types.is_float_dtype(values):
        ids = values.astype(str)
        whole = values % 1 == 0
        small = whole & (values.abs() < 2.0**63)  # past int64, astype would make them one id
        ids[small] = values[small].astype("int64").astype(str)
        ids[whole & ~small] = values[whole & ~small].map(lambda value: str(int(value)))  # exact
        return ids
    if pd.api.types.is_integer_dtype(values):
        return values.astype(str)  # digits only: nothing to strip, never blank
    ids = values.astype(str).str.strip()
    blank = ids == ""
    if blank.any():
        bad_row(source, first(blank) + row_offset, column, "blank id")
    return ids


def first(flags: pd.Series | np.ndarray) -> int:
    """Position of the first True."""
    return int(np.flatnonzero(np.asarray(flags))[0])


def _as_timestamp(values: pd.Series, source: str, row_offset: int) -> pd.Series:
    """Timestamps at full precision: whole numbers stay exact int64, fractional ones float64,
    datetimes become int64 counts of their own unit (ns, us, ...). Only their order is used."""
    if pd.api.types.infer_dtype(values, skipna=True) == "date":  # Parquet's date32
        values = pd.to_datetime(values)
    if pd.api.types.is_datetime64_any_dtype(values):
        missing = values.isna()
        if missing.any():
            bad_row(source, first(missing) + row_offset, "timestamp", "empty value")
        return values.astype("int64")
    numbers = to_number(values, "timestamp", source, row_offset)
    too_large = numbers.abs() >= TIMESTAMP_LIMIT
    if too_large.any():
        position = first(too_large)
        problem = f"{values.iloc[position]!r} is out of range (at most ±9.2e18)"
        bad_row(source, position + row_offset, "timestamp", problem)
    if pd.api.types.is_integer_dtype(numbers):
        return numbers.astype("int64")
    if not pd.api.types.is_numeric_dtype(values) and _float_merges_times(values, numbers):
        return _exact_order(values)
    if (numbers % 1 == 0).all():
        return numbers.astype("int64")
    return numbers.astype("float64")


def _float_merges_times(texts: pd.Series, numbers: pd.Series) -> bool:
    """Whether float64 reads two different times written as text as one: more digits
    than it holds (``1600000000.000000400`` and ``...500``, nanoseconds past 2^53).

    Only a column with more distinct texts than distinct floats is read exactly
    (``1.5`` and ``1.50`` are one time, and say so then)."""
    distinct = numbers.nunique()
    if texts.str.strip().nunique() == distinct:
        return False
    return len(set(_exact(texts.unique()))) > distinct


def _exact(texts: np.ndarray) -> list[Decimal]:
    return [Decimal(str(text).strip()) for text in texts]


def _exact_order(texts: pd.Series) -> pd.Series:
    """Dense int64 ranks of timestamps written as text that float64 cannot tell apart:
    the order is read exactly."""
    ranks = np.unique(np.array(_exact(texts), dtype=object), return_inverse=True)[1]
    return pd.Series(ranks.astype("int64"), index=texts.index)


def check_dataset(dataset: object, name: str) -> Dataset:
    """What dataset plugin ``name`` returned, held to :class:`Dataset`'s contract.

    Columns already in the canonical form pass as they are (a dtype test
    each, so the built-in loaders pay next to nothing); others are cast as a
    file's columns would be, and what cannot be is one line naming the
    dataset, the row (its position) and the column.
    """
    source = f"dataset {name!r}"
    if not isinstance(dataset, Dataset):
        raise TwoTowerError(
            f"{source} returned a {type(dataset).__name__}, not a twotower.data.dataset.Dataset"
        )
    interactions = _checked_frame(
        dataset.interactions, INTERACTION_COLUMNS, f"{source} interactions"
    )
    if interactions.empty:
        raise TwoTowerError(f"{source}: no interactions")
    out = pd.DataFrame(
        {column: _checked_id(interactions[column], column, source) for column in ("user", "item")}
    )
    out["timestamp"] = _as_timestamp(interactions["timestamp"], source, row_offset=0)
    if "rating" in interactions.columns:
        out["rating"] = to_number(interactions["rating"], "rating", source, 0).astype("float64")
    items = dataset.items
    if items is not None:
        items = _checked_items(_checked_frame(items, ITEM_COLUMNS, f"{source} items"), source)
    return replace(dataset, interactions=out.reset_index(drop=True), items=items)


def _checked_frame(frame: object, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TwoTowerError(f"{what} are a {type(frame).__name__}, not a pandas DataFrame")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise TwoTowerError(f"{what} lack the column(s) {', '.join(missing)}")
    return frame


def _checked_id(values: pd.Series, column: str, source: str) -> pd.Series:
    """String ids pass unchanged (a plugin's ids are its own, spaces and all) unless one is
    missing or empty; other ids are cast as a file's are."""
    if pd.api.types.is_string_dtype(values) and not values.isna().any():
        empty = values == ""
        if empty.any():
            bad_row(source, first(empty), column, "blank id")
        return values
    return as_id(values, column, source, row_offset=0)


def _checked_items(items: pd.DataFrame, source: str) -> pd.DataFrame:
    """Items with str titles ("" where missing) and a list of str genres per item."""
    titles = items["title"]
    missing = titles.isna()
    genres = []
    for position, value in enumerate(items["genres"]):
        if value is None:
            value = []
        if isinstance(value, str) or not isinstance(value, list | tuple | np.ndarray):
            problem = f"{value!r} is a {type(value).__name__}, not a list of genre names"
            bad_row(source + " items", position, "genres", problem)
        if not all(isinstance(genre, str) for genre in value):
            bad_row(
                source + " items", position, "genres", f"{value!r} holds a name that is not a str"
            )
        genres.append(list(value))
    return pd.DataFrame(
        {
            "item": _checked_id(items["item"], "item", source + " items").to_numpy(),
            "title": titles.where(~missing, "").astype(str).to_numpy(),
            "genres": genres,
        }
    )
