"""Inference with a policy: each image runs its chosen (tokens, depth, width) in one pass per token count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...models.adaperceiver import AdaPerceiver, AdaPerceiverClassifier
from .network import ConfigPolicy


def run_from_patches(model: AdaPerceiver, patches: Tensor, grid: tuple[int, int], tokens: int, depth: int,
                     width: int) -> Tensor:
    """The rest of ``model(x, tokens, depth, width)`` once the patch embeddings are known."""
    hidden, _ = model.resolve_width(width, patches.shape[0])
    z = model.read_latents(patches, model.resolve_tokens(tokens))
    z, _ = model.run_blocks(z, model.resolve_depth(depth), hidden)
    return model.write_out(z, patches, grid)


@torch.no_grad()
def run_mixed(model: AdaPerceiver, patches: Tensor, grid: tuple[int, int], tokens: Sequence[int],
              depths: Sequence[int], widths: Sequence[int]) -> Tensor:
    """Outputs of a batch whose images each have their own ``(tokens, depth, width)``, in one pass.

    Equals ``run_from_patches`` per image: the batch runs at its largest token count (by the block
    mask, the first ``t`` latents evolve as in a run at ``t``) and each image's read-out sees only
    its first ``tokens[i]`` latents; widths differ per image through ``sample_hidden`` (units past
    an image's width are zeroed, which equals slicing); images are sorted by depth, deepest first,
    so after block ``j`` the images still running are a prefix of the batch and those whose depth
    is ``j`` are written out and leave it.
    """
    b = patches.shape[0]
    dev = patches.device
    order = sorted(range(b), key=lambda i: -depths[i])
    d_sorted = [depths[i] for i in order]
    t_sorted = [tokens[i] for i in order]
    w_sorted = [widths[i] for i in order]
    same_order = order == list(range(b))
    perm = None if same_order else torch.tensor(order, device=dev)
    p = patches if same_order else patches[perm]
    n = max(t_sorted)
    z = model.read_latents(p, n)
    hid = [min(model.resolve_width(w, 1)[0], model.cfg.mlp_hidden) for w in w_sorted]
    hid_t = torch.tensor(hid, device=dev) if min(hid) != max(hid) else None
    outs = []
    active = b
    mask = model.latent_mask(n, dev)
    for i in range(d_sorted[0]):
        h = hid[:active]
        if min(h) == max(h):
            z = model.blocks[i](z, model.rope, mask, h[0])
        else:
            z = model.blocks[i](z, model.rope, mask, sample_hidden=hid_t[:active])
        k = active
        while k > 0 and d_sorted[k - 1] == i + 1:
            k -= 1
        if k < active:  # images [k, active) stop after this block
            ts = t_sorted[k:active]
            zo = z[k:active]
            if min(ts) == max(ts):
                outs.append(model.write_out(zo[:, :ts[0]], p[k:active], grid))
            else:  # each image reads out its own latent prefix
                outs.append(model.write_out_lengths(zo, p[k:active], grid, torch.tensor(ts, device=dev)))
            z = z[:k]
            active = k
    out = torch.cat(outs[::-1]) if len(outs) > 1 else outs[0]  # shallowest were written first
    if same_order:
        return out
    res = torch.empty_like(out)
    res[perm] = out
    return res


@dataclass
class PolicyOutput:
    logits: Tensor  # (B, classes)
    actions: Tensor  # (B, 3) indices into the action space


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
        patches, grid = self.model.patch_embed(x)
        actions = self._choose(patches)
        space = self.policy.space
        chosen = [space.config(*a) for a in actions.tolist()]  # one host sync for the whole batch
        if len(set(chosen)) == 1:  # one configuration for the whole batch (always so at batch 1)
            return PolicyOutput(run_from_patches(self.model, patches, grid, *chosen[0]), actions)
        tokens, depths, widths = (list(v) for v in zip(*chosen))
        if self.group == "mixed" or (self.group == "tokens" and min(tokens) == max(tokens)):
            return PolicyOutput(run_mixed(self.model, patches, grid, tokens, depths, widths), actions)
        logits = patches.new_empty(x.shape[0], self.model.cfg.num_classes)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(chosen):
            groups.setdefault(c if self.group == "config" else c[:1], []).append(i)
        for key, idx in groups.items():
            sel = torch.tensor(idx, device=x.device)
            if self.group == "config":
                logits[sel] = run_from_patches(self.model, patches[sel], grid, *key)
            else:
                logits[sel] = run_mixed(self.model, patches[sel], grid, [tokens[i] for i in idx],
                                        [depths[i] for i in idx], [widths[i] for i in idx])
        return PolicyOutput(logits, actions)


__all__ = ["PolicyClassifier", "PolicyOutput", "run_from_patches", "run_mixed"]
