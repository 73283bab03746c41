"""``adaperceiver`` command line: one module per command (group) in this package.

Each command module defines ``register(subparsers)``, which adds its subcommand(s) with
``set_defaults(func=...)``; ``func(args)`` returns an exit code (or None). The library never
imports this package.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from .._version import __version__
from ..data.items import worker_error_line
from ..errors import UserError
from . import budget, convert, demo, distill, export, policy, predict, sweep, teacher, train, visualize
from .config_file import apply_config_file, command_parser, config_yaml

COMMANDS = [train, demo, sweep, predict, teacher, distill, policy, budget, export, visualize, convert]  # in --help order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaperceiver",
        description="AdaPerceiver: one vision transformer that adapts tokens, depth and width at inference.",
    )
    parser.add_argument("--version", action="version", version=f"adaperceiver {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, also print its full traceback (a DataLoader worker's included)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        from_file = apply_config_file(parser, argv)  # --config FILE.yaml: its values become the defaults
    except (UserError, ImportError) as e:
        print(f"{command_parser(parser, argv)[0].prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.given = {**from_file, **given_options(parser, args.command, argv)}
    try:
        if getattr(args, "print_config", False):
            print(config_yaml(args), end="")
            return 0
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"adaperceiver {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # user mistakes, and any error a DataLoader worker re-raises (its item, file and cause): one clear line
        line = worker_error_line(e)
        if line is None and not isinstance(e, (UserError, ValueError, FileNotFoundError, ImportError)):
            raise  # anything else is a bug: it propagates with its traceback
        if args.debug:
            traceback.print_exc()
        print(f"adaperceiver {args.command}: error: {line or one_line(e)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """The message on one line (some errors carry several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def given_options(parser: argparse.ArgumentParser, command: str, argv: list[str]) -> dict[str, str]:
    """``{dest: option as typed}`` for the options of ``command`` that ``argv`` gives explicitly.

    (argparse fills in defaults, so ``args`` alone cannot tell ``--lr 2e-3`` from no ``--lr``.)
    """
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = sub.choices[command]._option_string_actions
    given: dict[str, str] = {}
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        match = [name] if name in options else [o for o in options if o.startswith(name)]  # argparse abbreviations
        if len(match) == 1:
            given[options[match[0]].dest] = match[0]
    return given


__all__ = ["COMMANDS", "build_parser", "given_options", "main", "one_line"]


if __name__ == "__main__":
    sys.exit(main())
