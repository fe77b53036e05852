"""Your own data: an interactions file (CSV or Parquet) and an optional items file.

Column names are configurable; without flags the usual spellings are
recognised, so MovieLens' own ``ratings.csv`` and ``movies.csv`` load as they
are. Ids may be any strings.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import TwoTowerError
from .dataset import BadRow, Dataset, as_id, bad_row, normalise_interactions

ALIASES = {
    "user": ("user", "user_id", "userId", "userid", "UserID"),
    "item": ("item", "item_id", "itemId", "itemid", "movieId", "movie_id", "MovieID"),
    "timestamp": ("timestamp", "time", "ts", "Timestamp"),
    "rating": ("rating", "Rating", "score"),
    "title": ("title", "movie_title", "name", "Title"),
    "genres": ("genres", "genre", "class", "Genres"),
}
NO_RATING = "none"  # --rating-col none: ignore any rating column, every interaction is positive


COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")  # pandas reads these (.zst with zstandard)


def kind_suffix(path: Path) -> str:
    """The suffix that says what the file holds: ``ratings.tsv.gz`` is a TSV."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSIONS:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def is_parquet(path: Path) -> bool:
    return kind_suffix(path) in (".parquet", ".pq")


def first_row(path: Path) -> int:
    """The row number a person sees for data index 0: CSVs have a header line."""
    return 1 if is_parquet(path) else 2


def read_file(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV or Parquet file with every CSV column as text."""
    if path.is_dir():
        raise TwoTowerError(f"{path} is a folder; give a CSV or Parquet file")
    if not path.is_file():
        raise TwoTowerError(f"file not found: {path}")
    try:
        if is_parquet(path):
            return pd.read_parquet(path)  # pyarrow refuses a name twice itself
        sep = "\t" if kind_suffix(path) in (".tsv", ".tab") else ","
        header = pd.read_csv(path, sep=sep, dtype=str, header=None, nrows=1).iloc[0].tolist()
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except UnicodeDecodeError:
        raise TwoTowerError(f"{path}: {not_utf8(path)}; save it as UTF-8") from None
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        reason = " ".join(str(exc).split())  # one line: the parsers' messages hold newlines
        raise TwoTowerError(f"{path}: cannot read ({type(exc).__name__}: {reason})") from None
    named = [name for name in header if isinstance(name, str)]  # not the blank ones
    twice = sorted({name for name in named if named.count(name) > 1})
    if twice:  # pandas would read the first and rename the others "name.1"
        raise TwoTowerError(f"{path}: the header names column(s) {', '.join(twice)} twice")
    return frame


def not_utf8(path: Path) -> str:
    """Where a text file stops being UTF-8 (the parser only knows a position in its buffer)."""
    if kind_suffix(path) != path.suffix.lower():
        return "it is not UTF-8 text"  # compressed: its lines are not at hand
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"line {number} is not UTF-8 text (byte {line[exc.start]:#04x})"
    return "it is not UTF-8 text"


def distinct_columns(columns: dict[str, str | None], path: Path) -> dict[str, str | None]:
    """Each role reads a column of its own: one column as both item and timestamp is a
    mistyped flag, not data."""
    roles: dict[str, str] = {}
    for role, column in columns.items():
        if column is not None and column in roles:
            raise TwoTowerError(
                f"{path}: column {column!r} is picked as both {roles[column]} and {role}"
            )
        if column is not None:
            roles[column] = role
    return columns


def pick_column(frame: pd.DataFrame, role: str, chosen: str | None, path: Path, required: bool):
    """The column playing ``role``: the one the user named, else a known alias."""
    if chosen is not None:
        if chosen not in frame.columns:
            raise TwoTowerError(
                f"{path}: no column {chosen!r} (for {role}); columns are {list(frame.columns)}"
            )
        return chosen
    for alias in ALIASES[role]:
        if alias in frame.columns:
            return alias
    if required:
        raise TwoTowerError(
            f"{path}: missing {role} column (looked for {', '.join(ALIASES[role])}; "
            f"columns are {list(frame.columns)})"
        )
    return None


def load_interactions(
    path: Path,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
) -> pd.DataFrame:
    frame = read_file(path)
    columns = distinct_columns(
        {
            "user": pick_column(frame, "user", user_col, path, required=True),
            "item": pick_column(frame, "item", item_col, path, required=True),
            "timestamp": pick_column(frame, "timestamp", time_col, path, required=True),
            "rating": None
            if rating_col == NO_RATING
            else pick_column(frame, "rating", rating_col, path, required=False),
        },
        path,
    )
    picked = pd.DataFrame({role: frame[col] for role, col in columns.items() if col is not None})
    has_rating = columns["rating"] is not None
    with rows_as_lines(path):
        return normalise_interactions(picked, str(path), has_rating, row_offset=first_row(path))


@contextlib.contextmanager
def rows_as_lines(path: Path) -> Iterator[None]:
    """A bad row of a CSV reported at its line: pandas counts records, which blank lines
    and quoted fields spanning lines set apart from the lines an editor shows. The file
    is scanned only when a row is bad."""
    try:
        yield
    except BadRow as bad:
        line = None if is_parquet(path) else line_of_record(path, bad.row - first_row(path))
        if line is None:
            raise
        raise bad.at(line) from None


def line_of_record(path: Path, record: int) -> int | None:
    """The line where data record ``record`` (0 = the one after the header) starts, as
    pandas reads the file (blank lines skipped); None for a compressed file."""
    if kind_suffix(path) != path.suffix.lower():
        return None
    delimiter = "\t" if kind_suffix(path) in (".tsv", ".tab") else ","
    with path.open(encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text, delimiter=delimiter)
        seen, previous = -1, 0  # the header is record -1
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if not row:  # a blank line
                continue
            if seen == record:
                return start
            seen += 1
    return None


def load_items(
    path: Path,
    item_col: str | None = None,
    title_col: str | None = None,
    genres_col: str | None = None,
) -> pd.DataFrame:
    frame = read_file(path)
    item, title, genres = distinct_columns(
        {
            "item": pick_column(frame, "item", item_col, path, required=True),
            "title": pick_column(frame, "title", title_col, path, required=False),
            "genres": pick_column(frame, "genres", genres_col, path, required=False),
        },
        path,
    ).values()
    with rows_as_lines(path):
        items = pd.DataFrame({"item": as_id(frame[item], "item", str(path), first_row(path))})
        items["title"] = frame[title].fillna("").astype(str) if title else items["item"]
        if genres:
            start = first_row(path)
            items["genres"] = [
                _split_genres(value, path, start + position)
                for position, value in enumerate(frame[genres])
            ]
        else:
            items["genres"] = [[] for _ in range(len(items))]
        duplicated = items["item"].duplicated()
        if duplicated.any():
            position = int(duplicated.to_numpy().nonzero()[0][0])
            problem = f"item {items['item'][position]!r} listed twice"
            bad_row(str(path), position + first_row(path), "item", problem)
    return items


NO_GENRES = "(no genres listed)"  # MovieLens' word for an empty list


def _split_genres(value: Any, path: Path, row: int) -> list[str]:
    """An item's genres from text (``a|b``) or a Parquet list, cleaned alike: names
    stripped, empty and missing ones dropped, MovieLens' "no genres" dropped."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    if isinstance(value, str):
        names = value.split("|")
    elif isinstance(value, list | tuple | np.ndarray):
        names = [v for v in value if isinstance(v, str)]
        if len(names) != sum(v is not None for v in value):
            problem = f"{list(value)!r} holds a genre that is not text"
            bad_row(str(path), row, "genres", problem)
    else:
        bad_row(str(path), row, "genres", f"{value!r} is not text nor a list of genre names")
    genres = [g.strip() for g in names]
    return [g for g in genres if g and g != NO_GENRES]


def load(config) -> Dataset:
    """The ``files`` dataset: ``config.interactions`` (+ ``config.items``)."""
    if not config.interactions:
        raise TwoTowerError("the files dataset needs --interactions FILE (CSV or Parquet)")
    interactions = load_interactions(
        Path(config.interactions),
        config.user_col,
        config.item_col,
        config.time_col,
        config.rating_col,
    )
    items = None
    if config.items:
        items = load_items(Path(config.items), config.item_col, config.title_col, config.genres_col)
    return Dataset(Path(config.interactions).stem, interactions, items)


# the settings only this dataset reads: `--interactions FILE` alone selects it
load.settings = (
    "interactions",
    "items",
    "user_col",
    "item_col",
    "time_col",
    "rating_col",
    "title_col",
    "genres_col",
)
