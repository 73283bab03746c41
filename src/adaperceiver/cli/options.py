"""Command-line options generated from the config dataclasses.

A config field's type, default and metadata (``help``, ``group``, optional ``choices``) make its
flag, so a training option is declared once, in :class:`~adaperceiver.training.TrainConfig` (or the
:class:`~adaperceiver.training.ObjectiveConfig` nested in it). Flags are ``--`` plus the field name
with dashes (``warmup_steps`` -> ``--warmup-steps``; nested fields drop their parent:
``objective.label_smoothing`` -> ``--label-smoothing``), except for the few spellings in
:data:`FLAG_NAMES`. Booleans get the flag that flips their default (``--freeze-backbone`` for a
False default, ``--no-augment`` for a True one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError

# fields whose flag is not derived from the field name (kept for the commands' established spellings)
FLAG_NAMES = {
    "out_dir": "--out",
    "model_overrides": "--set",
    "objective.sample_widths": "--no-width-sampling",
    "objective.kd_temperature": "--temperature",
}
CONFIG_DEST = "cfg:"  # prefix of the argparse dests this module adds


def config_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """``(path, field, resolved type)`` of every field of ``cls``, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += config_fields(t, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f, t))
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _allowed(cls: type, path: str) -> str:
    """`` (allowed: [0, 1))`` from the ``RANGES`` of the config class that owns ``path``, or ``""``."""
    *parents, name = path.split(".")
    for p in parents:
        cls = typing.get_type_hints(cls)[p]
    spec = getattr(cls, "RANGES", {}).get(name)
    return f" (allowed: {spec})" if spec else ""


def _strip_optional(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


def _tuple_parser(item: type, length: int | None, flag: str, metavar: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(item(v) for v in text.split(",") if v.strip())
        except ValueError:
            values = None
        if values is None or not values or (length is not None and len(values) != length):
            want = f"{length} comma-separated {item.__name__}s" if length else f"comma-separated {item.__name__}s"
            raise argparse.ArgumentTypeError(f"{flag} takes {metavar} ({want}); got {text!r}")
        return values

    return parse


def parse_override(item: str) -> tuple[str, Any]:
    """``"embed_dim=96"`` -> ``("embed_dim", 96)`` (the value parsed as JSON when it is JSON)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE (a model config field), got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def flag_for(path: str, default: Any = None, is_bool: bool = False) -> str:
    if path in FLAG_NAMES:
        return FLAG_NAMES[path]
    name = path.rsplit(".", 1)[-1].replace("_", "-")
    if is_bool:
        return f"--no-{name}" if default else f"--{name}"
    return f"--{name}"


def add_config_options(parser: argparse.ArgumentParser, cls: type, groups: Iterable[str], *,
                       include: Iterable[str] = (), exclude: Iterable[str] = (),
                       defaults: Mapping[str, Any] | None = None, prefix: str = CONFIG_DEST) -> dict[str, argparse._ArgumentGroup]:
    """Add a flag for every field of ``cls`` whose metadata ``group`` is in ``groups`` (or whose path
    is in ``include``), except the paths in ``exclude``.

    ``defaults`` overrides field defaults by path (a command's own schedule). ``prefix`` keeps the
    dests of two configs on one command apart (read them back with the same prefix). Returns the
    argument groups by name, for a command to add its own options to.
    """
    groups, include, exclude, defaults = list(groups), set(include), set(exclude), dict(defaults or {})
    unknown = set(defaults) - {p for p, _, _ in config_fields(cls)}
    if unknown:
        raise ValueError(f"defaults for unknown {cls.__name__} fields {sorted(unknown)}")
    arg_groups = {g: parser.add_argument_group(g) for g in groups}
    for path, f, t in config_fields(cls):
        group = f.metadata.get("group")
        if (group not in groups and path not in include) or path in exclude:
            continue
        if group not in arg_groups:
            arg_groups[group] = parser.add_argument_group(group)
        default = defaults.get(path, _default(f))
        help_ = f.metadata.get("help", "") + _allowed(cls, path)
        dest = prefix + path
        base = _strip_optional(t)
        g = arg_groups[group]
        if base is bool:
            flag = flag_for(path, default, is_bool=True)
            # a flag that turns the field on (--x) or off (--no-x / an explicit off spelling)
            turns_on = not flag.startswith("--no-")
            g.add_argument(flag, dest=dest, action="store_true" if turns_on else "store_false", default=default,
                           help=f"{help_}: " + ("off by default, this flag turns it on" if turns_on
                                                 else "on by default, this flag turns it off"))
        elif typing.get_origin(base) is dict:
            g.add_argument(flag_for(path), dest=dest, action="append", type=parse_override, default=[],
                           metavar="KEY=VALUE", help=f"{help_} (repeatable)")
        elif typing.get_origin(base) is tuple:
            args = typing.get_args(base)
            length = None if len(args) == 2 and args[1] is Ellipsis else len(args)
            flag = flag_for(path)
            shown = "" if default is None else f" (default {','.join(str(v) for v in default)})"
            metavar = f.metadata.get("metavar") or (",".join(["N"] * length) if length else "A,B,...")
            g.add_argument(flag, dest=dest, type=_tuple_parser(args[0], length, flag, metavar), default=default,
                           metavar=metavar, help=help_ + shown)
        else:
            shown = "" if default is None else f" (default {default:g})" if isinstance(default, float) else f" (default {default})"
            g.add_argument(flag_for(path), dest=dest, type=base, default=default, choices=f.metadata.get("choices"),
                           metavar=None if f.metadata.get("choices") else path.rsplit(".", 1)[-1].upper(), help=help_ + shown)
    return arg_groups


def option_values(args: argparse.Namespace, prefix: str = CONFIG_DEST) -> dict[str, Any]:
    """The config values the generated flags parsed, by field path (``model_overrides`` as a dict)."""
    out = {}
    for dest, value in vars(args).items():
        if dest.startswith(prefix):
            path = dest[len(prefix):]
            out[path] = dict(value) if path == "model_overrides" else value
    return out


def config_from_args(cls: type, args: argparse.Namespace, prefix: str = CONFIG_DEST, **fixed: Any) -> Any:
    """``cls`` built from the generated flags and ``fixed`` values, which win.

    ``fixed`` holds field names (``name="demo"``) or whole nested configs (``objective=...``: then the
    flags of that nested config are ignored).
    """
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in option_values(args, prefix).items():
        head, dot, rest = path.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    hints = typing.get_type_hints(cls)
    for name, sub in nested.items():
        if name not in fixed:
            top[name] = hints[name](**sub)
    return cls(**{**top, **fixed})


# what a resumed run may take from the command line (everything else comes from its config.json)
RESUME_MAY_CHANGE = ("out_dir", "name", "max_steps", "device", "num_workers", "progress", "logger")


def resume_config(args, run_dir: Path, values: dict, saved: Any) -> Any:
    """``saved`` (the config a run in ``run_dir`` was started with) with the options a resumed run may
    change taken from ``values``; an option typed on the command line that would change anything else
    is refused (``train --resume`` and ``distill --resume``)."""
    kept = json.loads(json.dumps(saved.to_dict()))
    for dest, opt in sorted(getattr(args, "given", {}).items()):
        path = dest.removeprefix(CONFIG_DEST)
        if path == dest or path in RESUME_MAY_CHANGE:
            continue
        have: object = kept
        for part in path.split("."):
            have = have[part]
        want = json.loads(json.dumps(values[path]))
        if want != have:
            raise UserError(f"--resume continues {run_dir} with its saved settings, and {opt} would change {path} "
                            f"(saved {have!r}, given {want!r}); only "
                            + ", ".join(flag_for(k) for k in RESUME_MAY_CHANGE)
                            + f" may change: drop {opt}, or start a new run with another --name")
    return dataclasses.replace(saved, **{k: values[k] for k in RESUME_MAY_CHANGE})


__all__ = ["CONFIG_DEST", "FLAG_NAMES", "RESUME_MAY_CHANGE", "add_config_options", "config_fields", "config_from_args",
           "flag_for", "option_values", "parse_override", "resume_config"]
