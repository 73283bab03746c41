"""Would jsonargparse or tyro replace cli/options.py? Which of ``adaperceiver train``'s generated flags
they spell the same from :class:`TrainConfig`, and how many lines their errors take (docs/configs.md).

    pip install jsonargparse tyro
    PYTHONPATH=src python benchmarks/cli_libraries.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings

import jsonargparse
import tyro

from adaperceiver.cli import build_parser
from adaperceiver.training import TrainConfig

BAD = (["--lr", "x"], ["--static", "1,2"], ["--export", "foo"])


def flags(parser: argparse.ArgumentParser) -> set[str]:
    out = set()
    for a in parser._actions:
        out |= set(a.option_strings)
        if isinstance(getattr(a, "choices", None), dict):  # tyro nests subparsers for optional groups
            for sub in a.choices.values():
                out |= flags(sub)
    return out


def error_lines(parse, argv) -> tuple[int, str]:
    text = io.StringIO()
    with contextlib.redirect_stderr(text), contextlib.redirect_stdout(text):
        try:
            parse(argv)
        except BaseException as e:  # argparse exits; jsonargparse may raise
            if not isinstance(e, SystemExit):
                text.write(f"{e}")
    lines, in_usage = [], False
    for ln in text.getvalue().splitlines():  # every non-empty line except argparse's usage block
        in_usage = ln.startswith("usage:") or (in_usage and ln.startswith(" "))
        if ln.strip() and not in_usage:
            lines.append(ln)
    return len(lines), (lines[0].strip() if lines else "(accepted)")


def main() -> None:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    ours = {s for a in train._actions for s in a.option_strings if a.dest.startswith("cfg:")}
    jp = jsonargparse.ArgumentParser(exit_on_error=False)
    jp.add_class_arguments(TrainConfig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp = tyro.extras.get_parser(TrainConfig)
    print(f"adaperceiver train: {len(ours)} flags generated from TrainConfig")
    for name, theirs, parse in (("jsonargparse " + jsonargparse.__version__, flags(jp), jp.parse_args),
                                ("tyro " + tyro.__version__, flags(tp), lambda a: tyro.cli(TrainConfig, args=a))):
        same = ours & theirs
        print(f"{name}: {len(theirs - {'-h', '--help'})} flags, {len(same)} of ours spelled the same; "
              f"differ: {' '.join(sorted(ours - same))}")
        for argv in BAD:
            n, first = error_lines(parse, argv)
            print(f"  {' '.join(argv)!r}: {n} error lines; first: {first[:100]}")
    for argv in BAD:
        sub = ["train", *argv]
        n, first = error_lines(lambda a: parser.parse_args(a), sub)
        print(f"ours {' '.join(argv)!r}: {n} error lines; first: {first[:100]}")


if __name__ == "__main__":
    main()
