"""Typed fields with allowed values, checked into one-line errors.

One checker serves every place where values arrive from outside: run
settings (flags, TOML, ``--set``), plugin options and manifests. The types
come from a dataclass's annotations, the allowed values from an ``Allowed``
rule (in a field's metadata, or passed beside it). It is torch-free: the
serving runtime checks bundle manifests with it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from .errors import TwoTowerError

Spell = Callable[[str], str]  # field name -> how a message names it (a flag, a key)


@dataclass(frozen=True)
class Allowed:
    """The values a field may take: a closed or half-open interval, or a set of choices."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(choice) for choice in self.choices)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{bound(self.low)}, {bound(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {bound(self.low)}"
        return f"{'<' if self.high_open else '<='} {bound(self.high)}"


def bound(value: float) -> str:
    """A range's end as people write it: integers in full (1048576, not 1.04858e+06)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def at_least(low: float) -> Allowed:
    return Allowed(low=low)


def positive() -> Allowed:
    return Allowed(low=0, low_open=True)


def between(low: float, high: float, high_open: bool = False) -> Allowed:
    return Allowed(low=low, high=high, high_open=high_open)


def one_of(*choices: Any) -> Allowed:
    return Allowed(choices=choices)


def option(default: Any, allowed: Allowed | None = None) -> Any:
    """A dataclass field whose values ``check`` limits to ``allowed``."""
    return field(default=default, metadata={"allowed": allowed} if allowed else {})


# --- types -----------------------------------------------------------------------------

NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def describe(annotation: Any) -> str:
    """``int | None`` -> "an integer"; ``dict[str, Any]`` -> "a table"."""
    options = _members(annotation)
    return " or ".join(_describe_one(member) for member in options if member is not type(None))


def _describe_one(annotation: Any) -> str:
    origin = typing.get_origin(annotation) or annotation
    if origin is dict:
        return "a table"
    if origin is list:
        return "a list"
    return NAMES.get(origin, getattr(origin, "__name__", str(origin)))


def _members(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def conform(value: Any, annotation: Any) -> tuple[bool, Any]:
    """``(fits, value)``: whether ``value`` has the annotated type, and as that type.

    Booleans are not numbers here, an integer is a fine float, and floats
    must be finite: NaN compares false with everything and would slip past
    every range. A numpy scalar counts as the Python value it holds.
    """
    if isinstance(value, np.generic):
        value = value.item()
    for member in _members(annotation):
        origin = typing.get_origin(member) or member
        if member is Any or (member is type(None) and value is None):
            return True, value
        if origin is bool and isinstance(value, bool):
            return True, value
        if isinstance(value, bool):
            continue
        if origin is int and isinstance(value, int):
            return True, value
        if origin is float and isinstance(value, int | float) and math.isfinite(value):
            return True, float(value)
        if origin in (str, dict, list) and isinstance(value, origin):
            return True, value
    return False, value


# --- checking --------------------------------------------------------------------------


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_value(
    name: str, value: Any, annotation: Any, allowed: Allowed | None = None, where: str = ""
) -> Any:
    """``value`` as the annotated type, or one error naming the field and what it accepts."""
    fits, value = conform(value, annotation)
    expected = describe(annotation)
    if not fits:
        if isinstance(value, float) and "a number" in expected:
            expected = expected.replace("a number", "a finite number")
        raise TwoTowerError(f"{where}{name} must be {expected}, not {value!r}")
    if allowed is not None and value is not None and not allowed.admits(value):
        kind = "" if allowed.choices is not None else f"{expected} "
        raise TwoTowerError(f"{where}{name} must be {kind}{allowed}, not {value!r}")
    return value


def check(
    cls: type,
    values: Mapping[str, Any],
    where: str = "",
    spell: Spell = str,
    rules: Mapping[str, Allowed] | None = None,
    owner: str = "",
    complete: bool = False,
    noun: str = "key",
) -> dict[str, Any]:
    """Check ``values`` against the fields of dataclass ``cls``; return them typed.

    Messages start with ``where`` (a file, say) and name each field as
    ``spell`` writes it. An unknown key is an error; with an ``owner`` (the
    component whose options these are) it lists the known ones. ``complete``
    also requires every field that has no default; ``noun`` is what messages
    call a key. ``rules`` adds allowed values beside those in the fields'
    metadata.
    """
    if not isinstance(values, Mapping):  # a list's items would be read as its keys
        raise TwoTowerError(f"{where}expected a table, not {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        names = ", ".join(spell(name) if name else '""' for name in unknown)
        if owner:
            known = ", ".join(map(spell, fields))
            raise TwoTowerError(f"{where}unknown option(s) {names} of {owner}; known: {known}")
        raise TwoTowerError(f"{where}unknown {noun}(s) {names}")
    if complete:
        for name, spec in fields.items():
            has_default = not (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            )
            if not has_default and name not in values:
                raise TwoTowerError(f"{where}{noun} {spell(name)} is missing")
    hints = _hints(cls)
    rules = rules or {}
    return {
        name: check_value(
            spell(name),
            value,
            hints[name],
            rules.get(name) or fields[name].metadata.get("allowed"),
            where,
        )
        for name, value in values.items()
    }


def parse(cls: type, values: Mapping[str, Any], spell: Spell = str, owner: str = "") -> Any:
    """An instance of dataclass ``cls`` from checked ``values``."""
    return cls(**check(cls, values, spell=spell, owner=owner))
