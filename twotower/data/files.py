"""Your own data: an interactions file (CSV or Parquet) and an optional items file.

Column names are configurable; without flags the usual spellings are
recognised, so MovieLens' own ``ratings.csv`` and ``movies.csv`` load as they
are. Ids may be any strings.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import lzma
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from ..config import COLUMN_ALIASES
from ..errors import TwoTowerError
from .dataset import BadRow, Dataset, as_id, bad_row, first, normalise_interactions

NO_RATING = "none"  # --rating-col none: ignore any rating column, every interaction is positive


COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")  # pandas reads these (.zst with zstandard)


def kind_suffix(path: Path) -> str:
    """The suffix that says what the file holds: ``ratings.tsv.gz`` is a TSV."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSIONS:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


PARQUET_MAGIC = b"PAR1"  # the first and last four bytes of every Parquet file


def is_parquet(path: Path) -> bool:
    """Named ``.parquet``/``.pq``, or Parquet by its content whatever its name
    (``events.parq``): read as text it would be "not UTF-8"."""
    if kind_suffix(path) in (".parquet", ".pq"):
        return True
    try:
        with path.open("rb") as data:
            head = data.read(len(PARQUET_MAGIC))
            data.seek(max(data.seek(0, 2) - len(PARQUET_MAGIC), 0))
            return head == data.read() == PARQUET_MAGIC
    except OSError:
        return False


def delimiter(path: Path) -> str:
    return "\t" if kind_suffix(path) in (".tsv", ".tab") else ","


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
        # index_col=False: rows ending in a delimiter are read as they are, not shifted
        # one column left (pandas would take their first column as the index)
        options = dict(sep=delimiter(path), dtype=str, skipinitialspace=True, index_col=False)
        header = pd.read_csv(path, header=None, nrows=1, **options).iloc[0].tolist()
        check_delimiter(header, path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, keep_default_na=False, na_values=[""], **options)
    except TwoTowerError:
        raise
    except pd.errors.ParserWarning:  # values past the header's columns: they would be lost
        raise TwoTowerError(f"{path}: {longer_than_header(path, len(header))}") from None
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


def check_delimiter(header: list[Any], path: Path) -> None:
    """A header of one column spelled with another delimiter (``user;item;rating``, as
    spreadsheets write where the decimal mark is a comma) is named as such."""
    if len(header) == 1 and isinstance(header[0], str):
        used = next((mark for mark in (";", "\t", "|", ",") if mark in header[0]), None)
        if used is not None:
            raise TwoTowerError(
                f"{path}: its header {header[0]!r} reads as one column: is it separated by "
                f"{used!r}? twotower reads commas in a .csv and tabs in a .tsv"
            )


def not_utf8(path: Path) -> str:
    """Where a text file stops being UTF-8 (the parser only knows a position in its buffer)."""
    if is_compressed(path):
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
    for alias in COLUMN_ALIASES[role]:
        if alias in frame.columns:
            return alias
    if required:
        raise TwoTowerError(
            f"{path}: missing {role} column (looked for {', '.join(COLUMN_ALIASES[role])}; "
            f"columns are {list(frame.columns)})"
        )
    return None


def by_role(frame: pd.DataFrame, columns: dict[str, str | None]) -> pd.DataFrame:
    """The columns picked for their roles, named by role."""
    return pd.DataFrame({role: frame[col] for role, col in columns.items() if col is not None})


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
    picked = by_role(frame, columns)
    has_rating = columns["rating"] is not None
    with rows_as_lines(path):
        check_one_line_each(picked, path)
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


# the compressions whose lines the standard library reads back (zip and zstd: pandas only)
OPENERS: dict[str, Callable[..., IO[str]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def readable_lines(path: Path) -> bool:
    return not is_compressed(path) or path.suffix.lower() in OPENERS


def records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """The records of a CSV/TSV with ``readable_lines`` as pandas reads them (blank lines,
    or lines of spaces, skipped), each with the line it starts on; the header first."""
    opener = OPENERS.get(path.suffix.lower(), open) if is_compressed(path) else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text, delimiter=delimiter(path), skipinitialspace=True)
        previous = 0
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if any(field.strip() for field in row):
                yield start, row


def is_compressed(path: Path) -> bool:
    return kind_suffix(path) != path.suffix.lower()


def line_of_record(path: Path, record: int) -> int | None:
    """The line where data record ``record`` (0 = the one after the header) starts; None
    where the lines cannot be read back (a zip or zstd file)."""
    if not readable_lines(path):
        return None
    return next((line for seen, (line, _) in enumerate(records(path)) if seen == record + 1), None)


def longer_than_header(path: Path, width: int) -> str:
    """What to say of a file whose rows hold values past the header's ``width`` columns."""
    if readable_lines(path):
        for line, row in records(path):
            if len(row) > width and any(field.strip() for field in row[width:]):
                return f"line {line} has {len(row)} values where the header names {width} columns"
    return f"a row has more values than the header names columns ({width})"


def line_count(path: Path) -> int | None:
    """Lines in an uncompressed file (a last line without its newline counts); None when
    compressed."""
    if is_compressed(path):
        return None
    newlines, last = 0, b""
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            newlines, last = newlines + block.count(b"\n"), block
    return newlines + (not last.endswith(b"\n"))


def check_one_line_each(frame: pd.DataFrame, path: Path) -> None:
    """The values read (of the columns a role picked) hold no line break.

    A quote left open joins the lines after it into one value, and their
    rows would be lost without a word. Only a file with more lines than
    records (a quoted line break, a blank line) is searched.
    """
    if is_parquet(path) or line_count(path) == len(frame) + 1:
        return
    for column in frame.columns:
        broken = frame[column].str.contains("[\r\n]", regex=True, na=False)
        if broken.any():
            position = first(broken)
            value = frame[column].iloc[position]
            shown = repr(value) if len(value) <= 60 else f"{value[:60]!r}..."
            problem = (
                f"{shown} holds a line break; is a quote left open? It joins the lines "
                "after it into this value"
            )
            bad_row(str(path), position + first_row(path), column, problem)


def load_items(
    path: Path,
    item_col: str | None = None,
    title_col: str | None = None,
    genres_col: str | None = None,
) -> pd.DataFrame:
    frame = read_file(path)
    if frame.empty:  # a table that names no item would leave every item undescribed
        raise TwoTowerError(f"{path}: no items")
    columns = distinct_columns(
        {
            "item": pick_column(frame, "item", item_col, path, required=True),
            "title": pick_column(frame, "title", title_col, path, required=False),
            "genres": pick_column(frame, "genres", genres_col, path, required=False),
        },
        path,
    )
    item, title, genres = columns.values()
    with rows_as_lines(path):
        check_one_line_each(by_role(frame, columns), path)
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
