"""The action space of a policy (the grid of (tokens, depth, width) it chooses from) and each action's cost
in FLOPs or measured latency."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ...evaluation.cost import flop_counter, measure_flops, measure_latency
from ...models.adaperceiver import AdaPerceiver
from ...models.setting import Setting, SettingSpace
from ..budget import measure_configurations, setting_key


class ActionSpace(SettingSpace):
    """The choices of each policy head: a :class:`~adaperceiver.models.setting.SettingSpace` whose
    actions are one index per axis."""

    @classmethod
    def of(cls, model: AdaPerceiver) -> "ActionSpace":
        """Every trained setting of ``model`` (its :attr:`~AdaPerceiver.space`)."""
        return cls(*model.space.axes)

    def config(self, *index: int) -> Setting:
        """The setting of one action (an index per axis)."""
        return self.at(*index)

    def check(self, model: AdaPerceiver) -> None:
        """Every axis value must be a setting the model can run (checked by the model, one axis at a time)."""
        for k, values in enumerate(self.axes):
            for v in values:
                model.resolve_configuration(*(v if i == k else None for i in range(len(self.axes))))


def _example_input(model: AdaPerceiver) -> Tensor:
    p = next(model.parameters())
    c = model.cfg
    return torch.zeros(1, c.in_chans, c.img_size, c.img_size, device=p.device, dtype=p.dtype)


def _per_configuration(space: ActionSpace, value) -> Tensor:
    """``space.shape`` table of ``value(setting)``."""
    table = torch.zeros(space.shape, dtype=torch.float64)
    for s in space:
        table[space.index(s)] = value(s)
    return table


def configuration_flops(model: AdaPerceiver, space: ActionSpace) -> Tensor:
    """FLOPs per image of every configuration, ``(n_tokens, n_depths, n_widths)``, counted once each."""
    return _per_configuration(space, lambda s: measure_flops(model, s))


def configuration_latency(model: AdaPerceiver, space: ActionSpace, batch_size: int = 1, repeats: int = 10,
                          cache_path: str | Path | None = None, measure_missing: bool = True) -> Tensor:
    """Median milliseconds per image of every configuration at ``batch_size``, ``(n_tokens, n_depths,
    n_widths)``: a cost for :func:`train_policy` when wall-clock, not FLOPs, is what should shrink
    (on a CPU at batch 1 the time follows the number of blocks far more than the FLOPs).

    ``cache_path``: a latency cache shared with :mod:`adaperceiver.adapt.budget` (keyed by device, chip,
    dtype, compilation, batch size and torch version; another key's latencies are never used)."""
    configs = list(space)
    ms = measure_configurations(
        model, configs, batch_size, cache_path, measure_missing=measure_missing,
        measure=lambda m, s, b: measure_latency(m, s, b, repeats=repeats).median_ms)
    return _per_configuration(space, lambda s: ms[setting_key(s)] / batch_size)


def writeout_flops(model: AdaPerceiver, tokens: int) -> int:
    """FLOPs of one read-out (write attention + head) from ``tokens`` latents: early exit pays it per block."""
    x = _example_input(model)
    with torch.no_grad():
        feats = model.forward_features(x, tokens=tokens, depth=1)
    with torch.enable_grad(), flop_counter() as counter:
        model.write_out(*feats)
    return int(counter.get_total_flops())


__all__ = ["ActionSpace", "configuration_flops", "configuration_latency", "writeout_flops"]
