"""Numeric precision of a training or evaluation run: ``fp32``, ``bf16-mixed`` or ``fp16-mixed``.

Mixed precision runs the model under ``torch.autocast`` (weights and optimizer state stay fp32);
fp16 also needs a gradient scaler in training (its small gradients underflow), and torch only
offers fp16 autocast with a scaler on CUDA. The default follows the device: ``bf16-mixed`` on
CUDA (as the paper's runs), ``fp32`` elsewhere (CPU autocast is slower for these small layers).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ..errors import UserError

PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def default_precision(device: torch.device | str) -> str:
    """``bf16-mixed`` on CUDA, ``fp32`` on any other device."""
    return "bf16-mixed" if torch.device(device).type == "cuda" else "fp32"


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """``precision`` checked for ``device`` (None: the device's default)."""
    device = torch.device(device)
    if precision is None:
        return default_precision(device)
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp16-mixed" and device.type != "cuda":
        raise UserError(f"precision fp16-mixed needs a CUDA device (fp16 autocast with a gradient scaler), got "
                        f"{device.type}; use bf16-mixed or fp32 there")
    return precision


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (a no-op for ``fp32``)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for ``fp16-mixed`` (a pass-through otherwise)."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed")


__all__ = ["PRECISIONS", "autocast", "default_precision", "grad_scaler", "resolve_precision"]
