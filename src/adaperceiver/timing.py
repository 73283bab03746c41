"""Wall-clock timing of model calls: warm-up, repeats, median, device synchronisation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


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
