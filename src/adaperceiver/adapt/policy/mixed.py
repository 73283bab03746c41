"""Inference with a policy: each image runs its chosen (tokens, depth, width) in one pass per token count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...models.adaperceiver import AdaPerceiver, AdaPerceiverClassifier
from ...models.setting import Setting
from .network import ConfigPolicy


def run_from_patches(model: AdaPerceiver, patches: Tensor, grid: tuple[int, int], *setting: int) -> Tensor:
    """The rest of ``model(x, *setting)`` once the patch embeddings are known."""
    return model.forward_patches(patches, grid, Setting(*setting))


@torch.no_grad()
def run_mixed(model: AdaPerceiver, patches: Tensor, grid: tuple[int, int], *per_axis: Sequence[int]) -> Tensor:
    """Outputs of a batch whose images each have their own setting (one sequence of per-image values
    per axis: tokens, depths, widths), in one pass (the model's :meth:`~AdaPerceiver.forward_mixed`)."""
    return model.forward_mixed(patches, grid, [Setting(*s) for s in zip(*per_axis, strict=True)])


@dataclass
class PolicyOutput:
    logits: Tensor  # (B, classes)
    actions: Tensor  # (B, n_axes) indices into the action space


class PolicyClassifier(nn.Module):
    """Backbone + policy: embed patches once, choose a configuration per image, run the batch.

    ``group`` says how a batch whose images chose different configurations runs:

    * ``"tokens"`` (default): one :func:`run_mixed` pass per chosen token count: per-image depths
      and widths inside the pass, no latent wasted (measured fastest at batch 64 on CPU);
    * ``"mixed"``: one :func:`run_mixed` pass for the whole batch at its largest token count, each
      image written out from its own token prefix;
    * ``"config"``: one :func:`run_from_patches` call per distinct configuration.

    All three give each image the output of its own configuration. ``compile_policy`` compiles the
    policy network (``torch.compile``, once per batch size): its ~36 small operations cost about a
    quarter of the full configuration's time on a tiny CPU model when run eagerly.
    """

    GROUPS = ("tokens", "mixed", "config")

    def __init__(self, model: AdaPerceiverClassifier, policy: ConfigPolicy, group: str = "tokens",
                 compile_policy: bool = False):
        super().__init__()
        if not isinstance(model, AdaPerceiverClassifier):
            raise ValueError("PolicyClassifier needs an AdaPerceiverClassifier")
        if group not in self.GROUPS:
            raise ValueError(f"group must be one of {list(self.GROUPS)}, got {group!r}")
        policy.space.check(model)
        self.model = model
        self.policy = policy
        self.group = group
        self._choose = torch.compile(policy.choose, dynamic=False) if compile_policy else policy.choose

    @torch.no_grad()
    def forward(self, x: Tensor) -> PolicyOutput:
        model = self.model
        patches, grid = model.patch_embed(x)
        actions = self._choose(patches)
        space = self.policy.space
        chosen = [space.config(*a) for a in actions.tolist()]  # one host sync for the whole batch
        if len(set(chosen)) == 1:  # one configuration for the whole batch (always so at batch 1)
            return PolicyOutput(model.forward_patches(patches, grid, chosen[0]), actions)
        if self.group == "mixed" or (self.group == "tokens" and len({c.tokens for c in chosen}) == 1):
            return PolicyOutput(model.forward_mixed(patches, grid, chosen), actions)
        logits = patches.new_empty(x.shape[0], model.cfg.num_classes)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(chosen):
            groups.setdefault(c if self.group == "config" else c[:1], []).append(i)
        for key, idx in groups.items():
            sel = torch.tensor(idx, device=x.device)
            if self.group == "config":
                logits[sel] = model.forward_patches(patches[sel], grid, key)
            else:
                logits[sel] = model.forward_mixed(patches[sel], grid, [chosen[i] for i in idx])
        return PolicyOutput(logits, actions)


__all__ = ["PolicyClassifier", "PolicyOutput", "run_from_patches", "run_mixed"]
