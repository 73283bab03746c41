"""Cost of a configuration: FLOPs (one counter), wall-clock time (one timer), active parameters.

FLOP counting uses ``torch.utils.flop_counter``, made to see attention on every device.

PyTorch's counter has formulas for the CUDA attention kernels but not for the CPU flash kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so attention would count as zero on CPU.
We register the standard formula for it here: ``QK^T`` and ``PV`` are each ``2*B*H*Lq*Lk*E``
multiply-adds counted as FLOPs. A masked kernel still computes every score, so masks do not
reduce the count (nor the time): fewer tokens means a shorter sequence, which does.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.protocol import AdaptiveModel, CountsActiveParameters, DeploysSettingsAsModules
from ..models.setting import Setting
from ..models.util import eval_mode, module_device, num_parameters

SettingArg = Sequence[int | None] | None  # a Setting, a tuple of axis values (None: the model's default) or None


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


# --------------------------------------------------------------------------------------------------
# wall-clock timing of model calls: warm-up, repeats, median, device synchronisation
@dataclass
class Timing:
    median_ms: float
    min_ms: float
    iqr_ms: float
    repeats: int
    batch_size: int

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return 1000.0 * self.batch_size / self.median_ms


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_call(fn: Callable[[], object], batch_size: int, warmup: int = 3, repeats: int = 10,
              device: torch.device | str | None = None, min_seconds: float = 0.0) -> Timing:
    """Time ``fn()`` (which should run the model alone, on ready inputs).

    Runs ``warmup`` untimed calls, then at least ``repeats`` timed calls (more until ``min_seconds``
    have passed), and reports the median and spread in milliseconds per call.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_seconds:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [min(times), 0, max(times)]
    return Timing(statistics.median(times), min(times), q[2] - q[0], len(times), batch_size)


# --------------------------------------------------------------------------------------------------
# one configuration: active parameters, latency, GFLOPs; where it was measured
def active_parameters(model: nn.Module, setting: SettingArg = None) -> int:
    """Parameters used by ``model(x, *setting)``: the model's own count
    (:class:`~adaperceiver.models.protocol.CountsActiveParameters`), else all of them (a static model),
    after the setting is checked."""
    if isinstance(model, CountsActiveParameters):
        return model.active_parameters(*_axes(setting))
    if isinstance(model, AdaptiveModel):
        model.resolve_configuration(*_axes(setting))
    return num_parameters(model)


def _image_shape(model: nn.Module, img_size: int | Sequence[int] | None) -> tuple[int, int, int]:
    cfg = model.cfg
    if img_size is None:
        h = w = cfg.img_size
    elif isinstance(img_size, int):
        h = w = img_size
    else:
        h, w = (int(s) for s in img_size)
    return cfg.in_chans, h, w


def _axes(setting: SettingArg) -> tuple[int | None, ...]:
    """One value (or None: the model's default) per :class:`Setting` axis."""
    if setting is None:
        return (None,) * len(Setting._fields)
    try:
        values = tuple(setting)
    except TypeError:
        values = ()
    if len(values) != len(Setting._fields):
        raise TypeError(f"a setting is a Setting, a tuple of {len(Setting._fields)} values ({', '.join(Setting._fields)}) "
                        f"or None; got {setting!r} (0.2 took them as separate arguments)")
    return values


def _deployed(model: nn.Module, setting: SettingArg) -> tuple[nn.Module, dict[str, int]]:
    """What runs ``model(x, *setting)`` once deployed, and its call arguments: the setting's own module for a
    model that has one (:class:`DeploysSettingsAsModules`), else the model with the setting."""
    if isinstance(model, DeploysSettingsAsModules):
        return model.at_setting(*_axes(setting)), {}
    return model, _setting_kwargs(setting)


def _setting_kwargs(setting: SettingArg) -> dict[str, int]:
    """The setting as call arguments; none at all when nothing is set, so a static model
    (e.g. :class:`adaperceiver.models.vit.StaticViT`, called as ``model(x)``) is measured as well."""
    values = _axes(setting)
    if all(v is None for v in values):
        return {}
    return dict(zip(Setting._fields, values))


def measure_latency(model: nn.Module, setting: SettingArg, batch_size: int,
                    img_size: int | Sequence[int] | None = None, device: torch.device | str | None = None, *,
                    warmup: int = 3, repeats: int = 10, min_seconds: float = 0.0) -> Timing:
    """Median latency of ``model(x, *setting)`` (``model(x)`` when ``setting`` is None) on a ready random batch.

    The model alone is timed, in eval mode, under no_grad, with the input already on ``device``
    (default: the model's); the model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else module_device(model)
    dtype = next(model.parameters()).dtype
    x = torch.randn(batch_size, *_image_shape(model, img_size), device=device, dtype=dtype)
    run, kw = _deployed(model, setting)
    with eval_mode(model, run), torch.no_grad():
        return time_call(lambda: run(x, **kw), batch_size,
                         warmup=warmup, repeats=repeats, device=device, min_seconds=min_seconds)


def measure_gflops(model: nn.Module, setting: SettingArg = None, img_size: int | Sequence[int] | None = None,
                   device: torch.device | str | None = None) -> float:
    """GFLOPs per image of one setting (``torch.utils.flop_counter``, batch of one)."""
    return measure_flops(model, setting, img_size, device) / 1e9


def measure_flops(model: nn.Module, setting: SettingArg = None, img_size: int | Sequence[int] | None = None,
                  device: torch.device | str | None = None) -> int:
    """FLOPs per image of ``model(x, *setting)`` in eval mode (batch of one), as deployed (a model that
    runs a setting as a module of its own is counted on it): the one place that counts the cost of a setting."""
    device = torch.device(device) if device is not None else module_device(model)
    x = torch.zeros(1, *_image_shape(model, img_size), device=device, dtype=next(model.parameters()).dtype)
    run, kw = _deployed(model, setting)
    with eval_mode(model, run):
        return count_flops(run, x, **kw)


def device_name(device: torch.device | str) -> str:
    """The model of the chip behind ``device`` (``NVIDIA H100 80GB HBM3``, ``AMD EPYC``): latencies belong to it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                names = [ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name")]
        except OSError:
            names = []
        return names[0] if names else platform.processor() or platform.machine()
    return device.type


def machine_info() -> dict[str, Any]:
    """Where a measurement ran: platform, host, machine, processor, CPU count, torch version and threads
    (the one machine description: sweeps, policy results and the budget's latency cache use it)."""
    return {"platform": platform.platform(), "node": platform.node(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


__all__ = [
    "Timing", "active_parameters", "count_flops", "custom_formulas", "device_name", "flop_counter", "flops_by_op",
    "machine_info", "measure_flops", "measure_gflops", "measure_latency", "time_call"
]
