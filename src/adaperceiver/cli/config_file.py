"""YAML config files for the commands that run work (``train``, ``distill``, ``demo``, ``sweep``, ``policy train``).

A config file holds option values by name: the field path of a generated option (``lr``,
``objective.label_smoothing``, nested or dotted) or the argparse dest of a command's own option
(``latency_batch_sizes``). Its values go through the same parsers and checks as the flags, and
flags typed on the command line override them. ``--print-config`` prints the resolved values in
the same format, and every command writes them to ``OUT/config.yaml``, so
``--config RUN_DIR/config.yaml`` re-runs a run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write
from ..errors import UserError, first_line
from .options import CONFIG_DEST

CONFIG_FILE_NAME = "config.yaml"
# dests that are not part of a run's configuration (what to do with it, not what it is)
NOT_SAVED = {"help", "config_file", "print_config", "resume", "overwrite", "func", "command", "policy_command",
             "given", "config_parser"}


def add_config_file_options(p: argparse.ArgumentParser) -> None:
    """``--config FILE.yaml`` and ``--print-config`` on a command's parser."""
    g = p.add_argument_group("config file")
    g.add_argument("--config", dest="config_file", default=None, metavar="FILE.yaml",
                   help="read option values from this YAML file (e.g. RUN_DIR/config.yaml to re-run a run); "
                        "flags given on the command line override it")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration as YAML (the format --config reads) and exit")
    p.set_defaults(config_parser=p)


def _yaml():
    try:
        import yaml
    except ImportError:
        raise ImportError("config files need PyYAML: pip install pyyaml") from None
    return yaml


def _key(dest: str) -> str:
    return dest.removeprefix(CONFIG_DEST)


def config_actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{key: action}`` of the options a config file may set."""
    return {_key(a.dest): a for a in p._actions if a.option_strings and a.dest not in NOT_SAVED}


def _flatten(d: Mapping[str, Any], actions: Mapping[str, argparse.Action], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key not in actions:  # a nested section (objective: ...)
            out.update(_flatten(v, actions, key + "."))
        else:
            out[key] = v
    return out


def _as_text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _convert(action: argparse.Action, value: Any) -> Any:
    """``value`` (from YAML) as the parsed value of ``action``: through the option's own parser."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction) and isinstance(value, Mapping):  # --set KEY=VALUE pairs
        return list(value.items())
    if value is None:
        return None
    many = action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction)
    items = list(value) if many and isinstance(value, (list, tuple)) else [value] if many else None
    convert = action.type or str
    try:
        out = [convert(_as_text(v)) for v in items] if many else convert(_as_text(value))
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        raise ValueError(first_line(e)) from None
    if action.choices is not None:
        for v in out if many else [out]:
            if v not in action.choices:
                raise ValueError(f"must be one of {list(action.choices)}, got {v!r}")
    return out


def load_config_file(path: str | Path, p: argparse.ArgumentParser) -> dict[str, Any]:
    """``{dest: value}`` from a YAML config file for the command of parser ``p``; one-line errors."""
    path = Path(path)
    try:
        data = _yaml().safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"--config {path}: cannot read it ({e.strerror or first_line(e)})") from None
    except _yaml().YAMLError as e:
        raise UserError(f"--config {path} is not valid YAML ({first_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise UserError(f"--config {path} must hold a mapping of option names to values, got {type(data).__name__}")
    actions = config_actions(p)
    values = {}
    for key, value in _flatten(data, actions).items():
        if key not in actions:
            raise UserError(f"--config {path}: unknown option {key!r} for '{p.prog}'; allowed: {', '.join(sorted(actions))}")
        try:
            values[actions[key].dest] = _convert(actions[key], value)
        except ValueError as e:
            raise UserError(f"--config {path}: {key}: {e}") from None
    return values


def command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser that ``argv`` addresses and the arguments after its command name(s)."""
    p, i = parser, 0
    while True:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            return p, argv[i:]
        while i < len(argv) and argv[i].startswith("-"):
            i += 1
        if i >= len(argv) or argv[i] not in sub.choices:
            return p, argv[i:]
        p, i = sub.choices[argv[i]], i + 1


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, str]:
    """When ``argv`` names a ``--config FILE``, make its values the defaults of the addressed command
    (flags then override them). Returns ``{dest: "KEY in FILE"}`` of the values the file set."""
    p, rest = command_parser(parser, argv)
    if "config_file" not in {a.dest for a in p._actions}:
        return {}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", dest="config_file")
    known, _ = pre.parse_known_args(rest)
    if not known.config_file:
        return {}
    values = load_config_file(known.config_file, p)
    for action in p._actions:
        if action.dest in values and action.required:
            action.required = False  # given by the file
    p.set_defaults(**values)
    return {dest: f"{_key(dest)} in {known.config_file}" for dest in values}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _paths(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k != "model_overrides":
            out.update(_paths(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def resolved_config(args: argparse.Namespace, config: Any = None) -> dict[str, Any]:
    """The parsed options of ``args``' command as a nested mapping (the format :func:`load_config_file` reads).

    ``config`` (a config dataclass with ``to_dict()``, e.g. the :class:`TrainConfig` a resumed run
    continues with) supplies the values of the generated options instead of ``args``.
    """
    fixed = _paths(config.to_dict()) if config is not None else {}
    out: dict[str, Any] = {}
    for key, action in config_actions(args.config_parser).items():
        value = getattr(args, action.dest)
        if action.dest.startswith(CONFIG_DEST) and key in fixed:
            value = fixed[key]
        if isinstance(action, argparse._AppendAction) and key.endswith("model_overrides"):
            value = dict(value or [])
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _plain(value)
    return out


def config_yaml(args: argparse.Namespace, config: Any = None) -> str:
    from .. import __version__

    header = (f"# adaperceiver {args.config_parser.prog.removeprefix('adaperceiver ')}: resolved configuration "
              f"(adaperceiver {__version__}); re-run with --config THIS_FILE, flags override it\n")
    yaml = _yaml()

    class Dumper(yaml.SafeDumper):  # sections as blocks, lists on one line like the flags
        pass

    Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    return header + yaml.dump(resolved_config(args, config), Dumper=Dumper, sort_keys=False, default_flow_style=False)


def write_config_yaml(args: argparse.Namespace, directory: str | Path, config: Any = None) -> Path:
    """``directory/config.yaml`` with the resolved configuration of ``args`` (and ``config``)."""
    path = Path(directory) / CONFIG_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    text = config_yaml(args, config)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


__all__ = ["CONFIG_FILE_NAME", "add_config_file_options", "apply_config_file", "command_parser", "config_actions", "config_yaml",
           "load_config_file", "resolved_config", "write_config_yaml"]
