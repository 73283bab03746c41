"""``adaperceiver`` command line. Each subcommand lives in the module that does the work.

A module listed in ``COMMAND_MODULES`` defines ``register_cli(subparsers)``, which adds its
subcommand(s) with ``set_defaults(func=...)``; ``func(args)`` returns an exit code (or None).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [  # in the order --help lists them
    "adaperceiver.training",  # train, demo
    "adaperceiver.evaluation",  # sweep
    "adaperceiver.teachers",  # teacher
    "adaperceiver.distill",  # distill
    "adaperceiver.policy",  # policy train | eval
    "adaperceiver.budget",  # budget
    "adaperceiver.export",  # export
    "adaperceiver.visualize",  # visualize (dense predictions)
    "adaperceiver.convert",  # convert (reference checkpoints)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaperceiver",
        description="AdaPerceiver: one vision transformer that adapts tokens, depth and width at inference.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no stack trace
        print(f"adaperceiver {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
