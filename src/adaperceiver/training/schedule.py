"""Optimisation and determinism helpers of the training loop: per-step generators, the epoch batch
order and loader workers, the LR schedule, weight-decay groups and the weight EMA."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from . import distributed


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator for everything random in global step ``step``; ``rank=-1`` for draws all ranks share."""
    mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(mixed)


class EpochBatchSampler:
    """Batches of indices for one epoch, from ``start_batch`` on: a pure function of ``(seed, epoch)``.

    Every rank computes the same permutation and keeps its share of each global batch; the last
    incomplete batch is dropped so every step has the same global batch size.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 info: distributed.DistInfo | None = None):
        self.num_items, self.batch_size, self.seed, self.epoch = num_items, batch_size, seed, epoch
        self.start_batch = start_batch
        self.info = info or distributed.DistInfo()

    def __len__(self) -> int:
        return max(0, self.num_items // self.batch_size - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        perm = distributed.epoch_permutation(self.num_items, self.seed, self.epoch)
        for b in range(self.start_batch, self.num_items // self.batch_size):
            batch = perm[b * self.batch_size:(b + 1) * self.batch_size]
            yield distributed.rank_batch(batch, self.info).tolist()


def default_num_workers(dataset: Any) -> int:
    """Loader processes for ``dataset``: ``min(4, CPU cores)`` when it reads files per item (it has
    ``samples``, like an image folder), 0 for in-memory tensors (a worker would only copy them)."""
    base = getattr(dataset, "base", dataset)  # a subset reads like its base
    return min(4, os.cpu_count() or 1) if hasattr(base, "samples") else 0


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_steps`` then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def param_groups(named: Sequence[tuple[str, nn.Parameter]], weight_decay: float,
                 no_decay_names: Collection[str] = ()) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms, LayerScale, nor on ``no_decay_names``
    (the model's ``no_weight_decay()``: learned tokens and positions)."""
    decay, no_decay = [], []
    skip = set(no_decay_names)
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ModelEma:
    """Exponential moving average of a model's weights (and a copy of its buffers).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so short runs
    are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        d = min(self.decay, (1.0 + num_updates) / (10.0 + num_updates))
        for e, p in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(p.detach(), 1.0 - d)
            else:
                e.copy_(p)


__all__ = ["EpochBatchSampler", "ModelEma", "default_num_workers", "param_groups", "step_generator", "warmup_cosine"]
