"""FLOP counting with ``torch.utils.flop_counter``, made to see attention on every device.

PyTorch's counter has formulas for the CUDA attention kernels but not for the CPU flash kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so attention would count as zero on CPU.
We register the standard formula for it here: ``QK^T`` and ``PV`` are each ``2*B*H*Lq*Lk*E``
multiply-adds counted as FLOPs. A masked kernel still computes every score, so masks do not
reduce the count (nor the time): fewer tokens means a shorter sequence, which does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, lq, e = query_shape
    lk, ev = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * e + 2 * b * h * lq * lk * ev


# the counter hands formulas the *shapes* of tensor arguments
def _cpu_flash_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _sdpa_flops(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * _sdpa_flops(query, key, value)  # dQ, dK, dV, dP: twice the forward


def custom_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas for attention kernels the stock counter misses (those present in this torch build)."""
    aten = torch.ops.aten
    table = {}
    for name, fn in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_flash_forward),
                     ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_flash_backward)):
        if hasattr(aten, name):
            table[getattr(aten, name)] = fn
    return table


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (no printing) that also counts CPU attention."""
    return FlopCounterMode(display=False, custom_mapping=custom_formulas())


def count_flops(model: nn.Module, *args: Any, **kwargs: Any) -> int:
    """Total forward FLOPs of ``model(*args, **kwargs)``.

    Runs with autograd enabled (FLOPs of the forward are the same), because the counter's module
    tracker fails on parameter views created under ``no_grad``.
    """
    with torch.enable_grad(), flop_counter() as counter:
        model(*args, **kwargs)
    return int(counter.get_total_flops())


def flops_by_op(model: nn.Module, *args: Any, **kwargs: Any) -> dict[str, int]:
    with torch.enable_grad(), flop_counter() as counter:
        model(*args, **kwargs)
    return {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
