"""``adaperceiver`` command line: one module per command (group) in this package.

Each command module defines ``register(subparsers)``, which adds its subcommand(s) with
``set_defaults(func=...)``; ``func(args)`` returns an exit code (or None). The library never
imports this package.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from . import budget, convert, demo, distill, export, policy, sweep, teacher, train, visualize

COMMANDS = [train, demo, sweep, teacher, distill, policy, budget, export, visualize, convert]  # in --help order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaperceiver",
        description="AdaPerceiver: one vision transformer that adapts tokens, depth and width at inference.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as e:  # user mistakes: one clear line, no stack trace
        print(f"adaperceiver {args.command}: error: {e}", file=sys.stderr)
        return 2
    # anything else is a bug: it propagates with its traceback


if __name__ == "__main__":
    sys.exit(main())
