"""Parsers of small command-line values shared by several commands. (The training options are
generated from the config dataclasses: :mod:`adaperceiver.cli.options`.)"""

from __future__ import annotations

import sys

import torch

from ..data import get_dataset
from ..data.folder import CORRUPT_CHOICES
from ..data.for_model import DataMismatchError, load_for_model
from ..errors import UserError
from ..models.setting import Setting
from ..training.distributed import DistInfo, device_for


def parse_config_triple(text: str) -> Setting:
    """``"16,3,48"`` -> ``Setting(16, 3, 48)`` (tokens, depth, width)."""
    return Setting.parse(text)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--latency-batch-sizes must be comma-separated ints like 1,64, got {text!r}") from None
    if any(b < 1 for b in sizes):
        raise ValueError(f"--latency-batch-sizes must be >= 1, got {text!r}")
    return sizes


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
    if getattr(cfg, "task", "classification") != "classification":
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
