"""Errors for user mistakes, at the bottom of the import graph (every module may import this one).

Also the checks of user values that several modules share: :func:`check_fields` validates every
field of a config dataclass against its annotation (type) and a table of ranges.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Union


class UserError(ValueError):
    """A mistake in what the user asked for: a bad option, value, file or combination.

    The command line prints it as one line (exit status 2); anything else is a bug and keeps its traceback.
    It subclasses ValueError so callers catching ValueError keep working.
    """


# --------------------------------------------------------------------------------------------------
# checking user values: config dataclass fields (type from the annotation, range from a table)
_HINTS: dict[type, dict[str, Any]] = {}
_RANGE = re.compile(r"^(>=|>|<=|<)\s*(-?[\d.e+-]+)$|^([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])$")


def first_line(error: BaseException | str) -> str:
    """The first line of an error message (some libraries raise pages of text)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__ if isinstance(error, BaseException) else ""


def _in_range(value: float, spec: str) -> bool:
    m = _RANGE.match(spec)
    if m is None:
        raise ValueError(f"bad range spec {spec!r}")
    if m.group(1):
        op, bound = m.group(1), float(m.group(2))
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]
    lo, hi = float(m.group(4)), float(m.group(5))
    return (value >= lo if m.group(3) == "[" else value > lo) and (value <= hi if m.group(6) == "]" else value < hi)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            plural = {int: "ints", float: "numbers", str: "strings", bool: "true/false values"}
            return f"a list of {plural.get(args[0], _describe(args[0]))}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin is dict:
        return "a mapping"
    if hint is bool:
        return "true/false"
    return {int: "an int", float: "a number", str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


_NO = object()


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (lossless conversions only: int -> float, list -> tuple), or ``_NO``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is type(None):
        return None if value is None else _NO
    if origin in (Union, types.UnionType):
        for a in args:
            out = _coerce(value, a)
            if out is not _NO:
                return out
        return _NO
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NO
    if hint is str:  # a path object is a string field's value too (config.json stores it as text)
        return value if isinstance(value, str) else os.fspath(value) if isinstance(value, os.PathLike) else _NO
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _NO
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return _NO
        out = tuple(_coerce(v, a) for v, a in zip(value, items))
        return _NO if any(v is _NO for v in out) else out
    if origin is dict:
        return dict(value) if isinstance(value, Mapping) else _NO
    return value  # a nested config or another class: its own checks apply


def _numbers(value: Any) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if isinstance(value, tuple):
        return [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return []


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def check_value(cls: type, name: str, value: Any, spec: str | None, what: str) -> Any:
    """``value`` for field ``name`` of dataclass ``cls``, normalised, or :class:`UserError`."""
    hint = _hints(cls).get(name, Any)
    out = _coerce(value, hint)
    span = "" if not spec else f"in {spec}" if spec[0] in "[(" else spec
    if out is _NO:
        need = _describe(hint) + (f" ({span})" if spec else "")
        raise UserError(f"{what} field {name} must be {need}, got {value!r}")
    if not all(math.isfinite(v) for v in _numbers(out)):  # NaN or inf is never a sane setting
        need = f"finite ({span})" if spec else "finite"
        raise UserError(f"{what} field {name} must be {need}, got {value!r}")
    if spec and not all(_in_range(v, spec) for v in _numbers(out)):
        every = " for every item" if isinstance(out, tuple) else ""
        raise UserError(f"{what} field {name} must be {span}{every}, got {value!r}")
    return out


def check_fields(obj: Any, ranges: Mapping[str, str], what: str) -> None:
    """Check every field of dataclass ``obj`` against its annotation and ``ranges``, in place.

    Lossless forms are normalised (an int for a float field, a list for a tuple field); anything
    else raises :class:`UserError` naming ``what``, the field, the allowed values and the value.
    ``ranges`` maps a field to ``">= 1"``, ``"> 0"``, ``"[0, 1)"`` ...; for a list field it applies
    to every item.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out = check_value(type(obj), f.name, value, ranges.get(f.name), what)
        if out is not value:
            object.__setattr__(obj, f.name, out)


def check_mapping(cls: type, values: Mapping[str, Any], ranges: Mapping[str, str], what: str) -> dict[str, Any]:
    """Check a partial set of ``cls`` fields (e.g. overrides) one by one; unknown names are refused."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"unknown {what} fields {unknown}; allowed: {sorted(names)}")
    return {k: check_value(cls, k, v, ranges.get(k), what) for k, v in values.items()}


def from_known_fields(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """``cls(**values)`` for a dataclass, refusing keys it has no field for (naming them and the allowed ones)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; allowed: {sorted(names)}")
    return cls(**values)


__all__ = ["UserError", "check_fields", "check_mapping", "check_value", "first_line", "from_known_fields"]
