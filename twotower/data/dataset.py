"""The table every dataset plugin returns, and its validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import TwoTowerError

INTERACTION_COLUMNS = ("user", "item", "timestamp")  # plus optional "rating"
ITEM_COLUMNS = ("item", "title", "genres")


@dataclass
class Dataset:
    """Interactions plus optional item metadata, with raw ids as strings.

    ``interactions``: columns ``user`` (str), ``item`` (str), ``timestamp``
    (int64, seconds), and optionally ``rating`` (float64), in source order.
    ``items``: columns ``item`` (str), ``title`` (str), ``genres`` (list of
    str); ``None`` when the source has no metadata (the item tower then uses
    item IDs only).
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame | None = None


def to_number(values: pd.Series, column: str, source: str, row_offset: int = 2) -> pd.Series:
    """Parse a column as numbers or raise one line naming the first bad row.

    ``row_offset`` turns a 0-based data index into the row a person sees
    (2 for a CSV with a header line).
    """
    parsed = pd.to_numeric(values, errors="coerce")
    bad = parsed.isna()
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.iloc[position]
        problem = "empty value" if pd.isna(value) else f"{value!r} is not a number"
        raise TwoTowerError(f"{source}: row {position + row_offset}, column {column!r}: {problem}")
    return parsed


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
    """Ids as stripped strings; a float column of whole numbers reads as integers."""
    missing = values.isna()
    if missing.any():
        position = int(np.flatnonzero(missing.to_numpy())[0])
        raise TwoTowerError(
            f"{source}: row {position + row_offset}, column {column!r}: empty value"
        )
    if pd.api.types.is_float_dtype(values) and (values % 1 == 0).all():
        values = values.astype("int64")  # 12.0 -> "12", as the file meant
    return values.astype(str).str.strip()


def _as_timestamp(values: pd.Series, source: str, row_offset: int) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.as_unit("s").astype("int64")
    return to_number(values, "timestamp", source, row_offset).astype("int64")
