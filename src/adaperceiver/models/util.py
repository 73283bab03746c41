"""Small helpers for any ``nn.Module``: evaluation mode that restores itself, parameter count, device."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode for the ``with`` block and restore each one's mode afterwards
    (also when the block raises)."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def num_parameters(model: nn.Module) -> int:
    """All parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def module_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (cpu for a module without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


__all__ = ["eval_mode", "module_device", "num_parameters"]
