"""Property-based: whatever is malformed, a command fails in one line and touches nothing.

Hypothesis generates malformed interactions files, bad settings and damaged
artifact and bundle folders; for every case the command must exit 1 with
one ``error:`` line, no traceback, and leave every file and folder as it
was (nothing written, nothing removed). Each strategy produces input that is
wrong by construction, so a command that succeeds is a failure too. Example
counts are bounded so the module runs in well under a minute; set
``TWOTOWER_EXAMPLES`` (30 per test by default) to search deeper.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import string
import tempfile
import typing
from pathlib import Path

import numpy as np
import pandas as pd
from helpers import refused
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from twotower import artifacts
from twotower.config import TwoTowerConfig
from twotower.schema import conform
from twotower.validation import RULES

SETTINGS = settings(
    max_examples=int(os.environ.get("TWOTOWER_EXAMPLES", "30")),  # more for a deeper search
    deadline=None,
    database=None,  # no saved examples: every run draws afresh, within the bound
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# --- malformed interactions files --------------------------------------------------------

HEADER = ["user", "item", "rating", "timestamp"]
ROWS = [
    [str(u), str((u * 5 + s * 7) % 12 + 1), "5", str(1000 * u + s)]
    for u in range(1, 13)
    for s in range(6)
]
NOT_A_NUMBER = st.text(
    alphabet=st.characters(categories=["L", "P"], exclude_characters=",\"'\r\n"), min_size=1
).filter(lambda text: text.strip().lower() not in ("", "nan", "inf", "infinity", "-inf", "+inf"))
BAD_VALUES = {
    "user": st.sampled_from(["", "   "]),
    "item": st.sampled_from(["", "  "]),
    "rating": st.one_of(NOT_A_NUMBER, st.sampled_from(["", "inf", "-inf", "nan"])),
    "timestamp": st.one_of(
        NOT_A_NUMBER,
        st.sampled_from(["", "inf", "nan", "1e19", "-9.3e18"]),
        st.floats(min_value=2.0**63, allow_infinity=False).map(repr),
    ),
}


@st.composite
def bad_value_files(draw) -> tuple[bytes, str]:
    """The valid table with one cell spoiled; the error must name that cell's row."""
    column = draw(st.sampled_from(HEADER))
    row = draw(st.integers(0, len(ROWS) - 1))
    rows = [list(r) for r in ROWS]
    rows[row][HEADER.index(column)] = draw(BAD_VALUES[column])
    text = "\n".join(",".join(r) for r in [HEADER, *rows]) + "\n"
    return text.encode(), f"row {row + 2}, column '{column}'"


@st.composite
def broken_files(draw) -> tuple[bytes, str]:
    """Files that are not a table of interactions at all."""
    kind = draw(st.sampled_from(["empty", "header", "missing column", "binary", "no positives"]))
    if kind == "empty":
        return b"", ""
    if kind == "header":
        return (",".join(HEADER) + "\n").encode(), "no interactions"
    if kind == "missing column":
        dropped = draw(st.sampled_from(["user", "item", "timestamp"]))
        keep = [i for i, name in enumerate(HEADER) if name != dropped]
        lines = [[HEADER[i] for i in keep], *[[r[i] for i in keep] for r in ROWS]]
        return ("\n".join(",".join(line) for line in lines) + "\n").encode(), f"missing {dropped}"
    if kind == "binary":
        return b"\xff\xfe" + draw(st.binary(min_size=1, max_size=200)), "is not UTF-8 text"
    rows = [[*r[:2], draw(st.sampled_from(["1", "2", "3"])), r[3]] for r in ROWS]
    text = "\n".join(",".join(r) for r in [HEADER, *rows]) + "\n"
    return text.encode(), "nothing left after filtering"


BAD_CELLS = [
    ("user", None),
    ("rating", np.inf),
    ("rating", np.nan),
    ("timestamp", -np.inf),
    ("timestamp", np.nan),
    ("timestamp", pd.NaT),
]


@st.composite
def bad_parquet_files(draw) -> tuple[bytes, str]:
    """Typed Parquet columns with one missing or non-finite cell (a NaT, a NaN, an inf)."""
    frame = pd.DataFrame(ROWS, columns=HEADER).astype({"rating": float, "timestamp": float})
    row = draw(st.integers(0, len(frame) - 1))
    column, bad = draw(st.sampled_from(BAD_CELLS))
    if bad is pd.NaT:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s")
    frame.loc[row, column] = bad
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue(), f"row {row + 1}, column '{column}'"


FILES = st.one_of(
    st.tuples(st.one_of(bad_value_files(), broken_files()), st.sampled_from([".csv", ".tsv"])),
    st.tuples(bad_parquet_files(), st.just(".parquet")),
)


@SETTINGS
@given(case=FILES)
def test_malformed_interactions_fail_in_one_line(capsys, case):
    (content, expected), suffix = case
    if suffix == ".tsv":
        content = content.replace(b",", b"\t")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        path = root / f"ratings{suffix}"
        path.write_bytes(content)
        argv = ["fit", "--interactions", path, "--data-dir", root / "data", "--epochs", "1"]
        line = refused(capsys, root, *argv, "--no-progress", "--json")
    assert expected in line


# --- bad settings ---------------------------------------------------------------------------

HINTS = typing.get_type_hints(TwoTowerConfig)
FIELDS = [f.name for f in dataclasses.fields(TwoTowerConfig)]
TEXT = st.text(alphabet=string.ascii_letters + string.digits + " -_./:", max_size=8)
ANY_TOML_VALUE = st.one_of(
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.lists(st.integers(-9, 9), max_size=3),
)


def wrong_type(name: str):
    """Values TOML can hold that the field's type refuses."""
    return ANY_TOML_VALUE.filter(lambda value: not conform(value, HINTS[name])[0])


def out_of_range(name: str):
    allowed = RULES[name]
    if allowed.choices is not None:
        return TEXT.filter(lambda v: v not in allowed.choices)
    integer = int in typing.get_args(HINTS[name]) or HINTS[name] is int
    number = st.integers(-(2**40), 2**40) if integer else st.floats(-1e12, 1e12)
    return number.filter(lambda value: not allowed.admits(value))


@st.composite
def bad_settings(draw) -> tuple[str, object]:
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(RULES)))
        return name, draw(out_of_range(name))
    name = draw(st.sampled_from(FIELDS))
    return name, draw(wrong_type(name))


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return json.dumps(value)  # numbers, and strings as TOML basic strings


@SETTINGS
@given(setting=bad_settings())
def test_a_bad_setting_fails_in_one_line_naming_it(capsys, setting):
    name, value = setting
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        toml = root / "run.toml"
        toml.write_text(f"{name} = {toml_value(value)}\n", encoding="utf-8")
        argv = ["fit", "--config", toml, "--interactions", root / "absent.csv"]
        line = refused(capsys, root, *argv, "--data-dir", root / "data", "--no-progress")
    assert line.startswith(f"error: {toml}: {name} must be ")


# --- damaged artifacts and bundles ------------------------------------------------------


def listed(folder: Path) -> list[str]:
    return sorted(json.loads((folder / artifacts.MANIFEST).read_text())["files"])


@st.composite
def damages(draw, folder: Path, kind: str):
    """A change to a copy of ``folder`` that its checks must catch, as (name, apply)."""
    names = listed(folder)
    schema = artifacts.KINDS[kind].schema
    hints = typing.get_type_hints(schema)
    how = draw(
        st.sampled_from(
            ["flip", "truncate", "delete", "unlisted", "drop field", "retype field", "not json"]
        )
    )
    if how in ("flip", "truncate", "delete"):
        name = draw(st.sampled_from(names + ([artifacts.MANIFEST] if how == "delete" else [])))
        size = (folder / name).stat().st_size
        offset = draw(st.integers(0, max(0, size - 1)))

        def apply(copy: Path) -> None:
            path = copy / name
            if how == "delete":
                path.unlink()
            elif how == "truncate":
                path.write_bytes(path.read_bytes()[:offset])
            else:
                data = bytearray(path.read_bytes())
                data[offset] ^= 0xFF
                path.write_bytes(bytes(data))

        return f"{how} {name}", apply
    if how == "unlisted":
        extra = draw(
            st.text(alphabet="abcxyz_.", min_size=1, max_size=8).filter(
                lambda n: n not in (".", "..") and n not in names and n != artifacts.MANIFEST
            )
        )
        return f"unlisted {extra}", lambda copy: (copy / extra).write_bytes(b"x")
    manifest = json.loads((folder / artifacts.MANIFEST).read_text())
    if how == "not json":
        text = json.dumps(manifest)
        cut = draw(st.integers(0, len(text) - 1))
        junk = draw(st.sampled_from([text[:cut], "[]", "null", "3", '"manifest"']))
        return "not json", lambda copy: (copy / artifacts.MANIFEST).write_text(junk)
    required = [f.name for f in dataclasses.fields(schema) if f.default is dataclasses.MISSING]
    field = draw(st.sampled_from(required if how == "drop field" else sorted(hints)))
    if how == "drop field":
        manifest.pop(field)
    else:
        manifest[field] = draw(ANY_TOML_VALUE.filter(lambda v: not conform(v, hints[field])[0]))
    text = json.dumps(manifest)
    return f"{how} {field}", lambda copy: (copy / artifacts.MANIFEST).write_text(text)


COMMANDS = {
    "recommend": lambda folder, out: ["recommend", "--artifacts-dir", folder, "--user-id", "1"],
    "evaluate": lambda folder, out: ["evaluate", "--artifacts-dir", folder],
    "export": lambda folder, out: ["export", "--artifacts-dir", folder, "--out", out],
}


@SETTINGS
@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)))
def test_damaged_artifacts_fail_in_one_line(capsys, fitted_artifacts, data, command):
    label, apply = data.draw(damages(fitted_artifacts, "artifacts"))
    note(label)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        copy = Path(shutil.copytree(fitted_artifacts, root / "artifacts"))
        apply(copy)
        refused(capsys, root, *COMMANDS[command](copy, root / "bundle"))


@SETTINGS
@given(data=st.data())
def test_damaged_bundles_fail_in_one_line(capsys, exported_bundle, data):
    label, apply = data.draw(damages(exported_bundle, "bundle"))
    note(label)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        copy = Path(shutil.copytree(exported_bundle, root / "bundle"))
        apply(copy)
        refused(capsys, root, "recommend", "--bundle", copy, "--user-id", "1")
