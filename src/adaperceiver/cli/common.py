"""Parsers of small command-line values shared by several commands. (The training options are
generated from the config dataclasses: :mod:`adaperceiver.cli.options`.)"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from ..data import get_dataset
from ..data.folder import CORRUPT_CHOICES
from ..data.for_model import DataMismatchError, load_for_model
from ..errors import UserError
from ..models.setting import Setting
from ..training.distributed import DistInfo, device_for


def parse_config_triple(text: str, flag: str) -> Setting:
    """``"16,3,48"`` -> ``Setting(16, 3, 48)`` (tokens, depth, width), given with option ``flag``."""
    try:
        return Setting.parse(text)
    except ValueError as e:
        raise UserError(f"{flag}: {e}") from None


def _batch_sizes(value: str | Sequence[int]) -> tuple[int, ...] | None:
    try:
        items = value.split(",") if isinstance(value, str) else list(value)
        sizes = tuple(int(v) for v in items if str(v).strip())
    except (TypeError, ValueError):
        return None
    return sizes if all(b >= 1 for b in sizes) else None  # empty: measure no latency


def parse_batch_sizes(value: str | Sequence[int], flag: str = "--latency-batch-sizes") -> tuple[int, ...]:
    """``"1,64"`` (or ``[1, 64]`` from a config file) -> ``(1, 64)``, given with option ``flag``; ``""`` -> ``()``."""
    sizes = _batch_sizes(value)
    if sizes is None:
        raise UserError(f"{flag} takes comma-separated batch sizes >= 1 like 1,64, got {value!r}")
    return sizes


def batch_sizes_arg(text: str) -> tuple[int, ...]:
    """:func:`parse_batch_sizes` as an argparse ``type`` (argparse puts the option's name in front)."""
    sizes = _batch_sizes(text)
    if sizes is None:
        raise argparse.ArgumentTypeError(f"takes comma-separated batch sizes >= 1 like 1,64, got {text!r}")
    return sizes


@contextmanager
def flags_named(flags: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a config's ``... field NAME must be ...`` error naming the flag that set NAME."""
    try:
        yield
    except ValueError as e:
        msg = str(e)
        m = re.search(r"\b(?:[a-z ]+ )?config field (\w+)", msg)
        if m is None or m.group(1) not in flags:
            raise
        raise UserError(msg[:m.start()] + flags[m.group(1)] + msg[m.end():]) from None


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")


def load_dataset(spec: str, split: str, model=None, args=None):
    """A dataset named on the command line: ``NAME`` or ``NAME:ROOT`` (``fashion-mnist``, ``digits``,
    ``imagefolder:PATH``, ``ade20k:PATH`` ...).

    With ``model``: prepared as its data config says (:func:`adaperceiver.data.for_model.load_for_model`,
    honouring ``--allow-mismatch`` / ``--corrupt-images`` of :func:`add_data_options`); what was converted
    or allowed is printed, one line each.
    """
    name, _, root = spec.partition(":")
    if model is None:
        return get_dataset(name, split, root=root or None)
    allow = bool(getattr(args, "allow_mismatch", False))
    try:
        data, notes = load_for_model(spec, split, model.data_config, num_classes=classifier_outputs(model),
                                     allow_mismatch=allow, on_corrupt=getattr(args, "corrupt_images", "fail"))
    except DataMismatchError as e:
        raise UserError(f"{e}; --allow-mismatch evaluates anyway") from None
    for line in notes:
        print(line, file=sys.stderr)
    return data


def classifier_outputs(model) -> int | None:
    """The class count of a classifier (None for a dense model)."""
    cfg = getattr(model, "cfg", None)
    if getattr(model, "task", None) in ("segmentation", "depth") or getattr(cfg, "task", "classification") != "classification":
        return None
    return getattr(cfg, "num_classes", None)


def add_data_options(p) -> None:
    """``--allow-mismatch`` and ``--corrupt-images`` for commands that read a dataset for a model."""
    p.add_argument("--allow-mismatch", action="store_true",
                   help="evaluate even when the data contradicts the model's data config (size, channels, "
                        "normalisation, class names); the mismatch is printed")
    p.add_argument("--corrupt-images", choices=CORRUPT_CHOICES, default="fail",
                   help="image folders: refuse unreadable files (fail, default) or leave them out and list them (skip)")


def add_device_option(p) -> None:
    """``--device``: where a command runs its model (read back with :func:`command_device`)."""
    p.add_argument("--device", default=None,
                   help="torch device to run the model on: cpu, cuda, cuda:1, mps (default: cuda when available, else cpu)")


def command_device(name: str | None) -> torch.device:
    """The device ``--device`` names (one-line error when unknown or unavailable), or cuda when available, else cpu."""
    return device_for(DistInfo(), name)


def add_inference_options(p) -> None:
    """``--dtype`` and ``--compile``: run configurations through ``model.for_inference(dtype, compile)``."""
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="run each configuration as a slim static module in this dtype (bfloat16 is several times "
                        "faster on CPUs with AMX / AVX-512-bf16; see docs/performance.md); default: the model as loaded")
    p.add_argument("--compile", action="store_true",
                   help="also compile each configuration with torch.compile (once per configuration and batch size; "
                        "the first call of each takes seconds to minutes)")
