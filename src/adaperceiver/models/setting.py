"""The adaptive setting of one call and the space of settings a model was trained on.

A :class:`Setting` is what an adaptive model is run at: ``(tokens, depth, width)`` — latent tokens,
blocks, FFN width in embedding units. A :class:`SettingSpace` holds the allowed values of each axis
(for a model: its trained granularities, depths ``1..L`` and trained widths); it validates a setting
and iterates the grid. Sweep rows, policy actions, static baselines, budget answers and the command
line all speak these two types.

Adding an axis: a field in :class:`Setting` and :class:`SettingSpace` (``AXES`` pairs them), the
model's call argument and its space (``models/adaperceiver.py``); see docs/architecture.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any, NamedTuple


class Setting(NamedTuple):
    """One setting of an adaptive model: latent tokens, blocks run, FFN width (embedding units).

    A named tuple, so it is frozen, hashable, equal to the plain tuple of its values and unpacks as
    ``t, d, w = setting``. Ordering is by cost: a setting no larger than another on every axis sorts
    first (the key is the product of the axes, then the axes themselves).
    """

    tokens: int
    depth: int
    width: int

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """``"16,3,48"`` -> ``Setting(tokens=16, depth=3, width=48)``."""
        try:
            vals = tuple(int(v) for v in str(text).split(","))
        except ValueError:
            vals = ()
        if len(vals) != len(cls._fields):
            names = ",".join(f.upper() for f in cls._fields)
            raise ValueError(f"a configuration is {names} like 16,3,48; got {text!r}")
        return cls(*vals)

    @classmethod
    def of(cls, value: Any) -> "Setting":
        """A setting from a setting, a tuple of axis values or a mapping with the axis names (a sweep row)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls(*(int(value[f]) for f in cls._fields))
        return cls(*(int(v) for v in value))

    def as_dict(self) -> dict[str, int]:
        """The axis values under their names (the column names of a sweep row)."""
        return dict(zip(self._fields, self))

    @property
    def cost_key(self) -> tuple[int, ...]:
        return (prod(self), *self)

    def __lt__(self, other: tuple) -> bool:  # type: ignore[override]
        return self.cost_key < Setting.of(other).cost_key

    def __le__(self, other: tuple) -> bool:  # type: ignore[override]
        return self.cost_key <= Setting.of(other).cost_key

    def __gt__(self, other: tuple) -> bool:  # type: ignore[override]
        return self.cost_key > Setting.of(other).cost_key

    def __ge__(self, other: tuple) -> bool:  # type: ignore[override]
        return self.cost_key >= Setting.of(other).cost_key

    def __str__(self) -> str:
        return ",".join(str(v) for v in self)


# the SettingSpace field holding the allowed values of each Setting axis, in Setting's order
AXES: dict[str, str] = {"tokens": "tokens", "depth": "depths", "width": "widths"}


@dataclass(frozen=True)
class SettingSpace:
    """The allowed values of each axis; the grid is their product (tokens outermost, width innermost)."""

    tokens: tuple[int, ...]
    depths: tuple[int, ...]
    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in AXES.values():
            try:
                v = tuple(int(a) for a in getattr(self, name))
            except (TypeError, ValueError):
                v = ()
            if not v or list(v) != sorted(set(v)) or v[0] < 1:
                raise ValueError(f"setting space {name} must be non-empty increasing positive ints, "
                                 f"got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)

    @property
    def axes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(getattr(self, name) for name in AXES.values())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    @property
    def full(self) -> Setting:
        """The largest setting: the last value of every axis."""
        return Setting(*(a[-1] for a in self.axes))

    def at(self, *index: int) -> Setting:
        """The setting at one index per axis (a policy's action)."""
        return Setting(*(a[i] for a, i in zip(self.axes, index)))

    def index(self, setting: Sequence[int]) -> tuple[int, ...]:
        """The index per axis of ``setting`` (the inverse of :meth:`at`)."""
        s = self.validate(setting)
        return tuple(a.index(v) for a, v in zip(self.axes, s))

    def __iter__(self) -> Iterator[Setting]:
        return (Setting(*v) for v in itertools.product(*self.axes))

    def __len__(self) -> int:
        return prod(self.shape)

    def __contains__(self, setting: object) -> bool:
        try:
            s = Setting.of(setting)  # type: ignore[arg-type]
        except (TypeError, ValueError, KeyError):
            return False
        return all(v in a for v, a in zip(s, self.axes))

    def validate(self, setting: Sequence[int] | Mapping[str, int]) -> Setting:
        """``setting`` as a :class:`Setting`; a value outside this space is refused naming the allowed ones."""
        s = Setting.of(setting)
        for (field, name), v, allowed in zip(AXES.items(), s, self.axes):
            if v not in allowed:
                raise ValueError(f"{field} {v} is not in this space's {name} {list(allowed)} (setting {s})")
        return s

    def to_dict(self) -> dict[str, list[int]]:
        return {name: list(a) for name, a in zip(AXES.values(), self.axes)}

    @classmethod
    def spanning(cls, settings: Iterable[Sequence[int]]) -> "SettingSpace":
        """The smallest space holding every one of ``settings``."""
        ss = [Setting.of(s) for s in settings]
        if not ss:
            raise ValueError("a setting space needs at least one setting")
        return cls(*(tuple(sorted({s[i] for s in ss})) for i in range(len(Setting._fields))))


__all__ = ["AXES", "Setting", "SettingSpace"]
