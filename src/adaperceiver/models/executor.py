"""The one place a setting is run: read -> blocks -> write, for every way a batch can be read out.

Every caller — ``model(x, tokens, depth, width)``, anytime read-outs (several depths and token counts
from one pass), confidence early exit, batches whose images each have their own setting (a policy),
the reference-checkpoint path (:mod:`adaperceiver.reference`) and the active-parameter count — goes
through these functions, and only :func:`run_blocks` calls the blocks. A change to the block call is
made here once.

They take the model (an :class:`~adaperceiver.models.adaperceiver.AdaPerceiver`; typed ``nn.Module``
because the model module imports this one) as their first argument and are exposed as its methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .outputs import AnytimeOutput, EarlyExitOutput
from .util import num_parameters


def run_blocks(model: nn.Module, z: Tensor, depth: int, hidden: int | None = None,
               sample_hidden: Tensor | None = None, start: int = 0, keep: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
    """Run blocks ``start..depth-1``; also return the states after the (1-based) depths in ``keep``."""
    mask = model.latent_mask(z.shape[1], z.device)
    kept = []
    for i in range(start, depth):
        z = model.blocks[i](z, model.rope, mask, hidden, sample_hidden)
        if i + 1 in keep:
            kept.append(z)
    return z, kept


def run_patches(model: nn.Module, patches: Tensor, grid: tuple[int, int], setting: Sequence[int]) -> Tensor:
    """The rest of ``model(x, *setting)`` once the patch embeddings are known."""
    tokens, depth, width = setting
    hidden, _ = model.resolve_width(width, patches.shape[0])
    z = model.read_latents(patches, model.resolve_tokens(tokens))
    z, _ = run_blocks(model, z, model.resolve_depth(depth), hidden)
    return model.write_out(z, patches, grid)


def run_anytime(model: nn.Module, x: Tensor, tokens: int | None = None, width: Any = None,
                depths: Sequence[int] | None = None, token_counts: Sequence[int] | None = None) -> AnytimeOutput:
    """Outputs for every token granularity and every depth from one backbone pass (see
    :meth:`AdaPerceiver.forward_anytime`)."""
    x = model.check_input(x)
    n = model.resolve_tokens(tokens)
    depths = tuple(range(1, model.num_blocks + 1)) if depths is None else tuple(sorted({model.resolve_depth(d) for d in depths}))
    counts = model.resolve_token_counts(token_counts, n)
    together = tuple(c for c in counts if model.shares_pass(c, n))
    if together != counts:
        # the other counts do not nest in this pass: read them out of passes of their own
        rest = tuple(c for c in counts if c not in together)
        parts = [run_anytime(model, x, n, width, depths, together)] if together else []
        parts.append(run_anytime(model, x, rest[-1], width, depths, rest))
        order = sorted(range(len(counts)), key=lambda i: (together + rest)[i])
        out = torch.cat([p.outputs for p in parts], dim=1)[:, order]
        return AnytimeOutput(out, depths, counts)
    hidden, sample_hidden = model.resolve_width(width, x.shape[0])
    patches, grid = model.patch_embed(x)
    z = model.read_latents(patches, n)
    _, states = run_blocks(model, z, depths[-1], hidden, sample_hidden, keep=depths)
    num_d = len(depths)
    out = model.write_out(torch.cat(states), patches.repeat(num_d, 1, 1), grid, prefixes=counts)
    out = out.reshape(num_d, x.shape[0], *out.shape[1:]).transpose(1, 2)
    return AnytimeOutput(out, depths, counts, torch.stack(states), patches, grid)


def run_early_exit(model: nn.Module, x: Tensor, threshold: float, tokens: int | None = None,
                   width: Any = None) -> EarlyExitOutput:
    """Confidence early exit (see :meth:`AdaPerceiverClassifier.forward_early_exit`)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    x = model.check_input(x)
    n = model.resolve_tokens(tokens)
    hidden, sample_hidden = model.resolve_width(width, x.shape[0])
    patches, grid = model.patch_embed(x)
    z = model.read_latents(patches, n)
    b = x.shape[0]
    logits = patches.new_empty(b, model.cfg.num_classes)
    exit_depth = torch.full((b,), model.num_blocks, dtype=torch.long, device=x.device)
    active = torch.arange(b, device=x.device)
    for i in range(model.num_blocks):
        sh = None if sample_hidden is None else sample_hidden[active]
        z, _ = run_blocks(model, z, i + 1, hidden, sh, start=i)
        out = model.write_out(z, patches[active], grid)
        if i == model.num_blocks - 1:
            logits[active] = out
            break
        done = out.softmax(-1).amax(-1) >= threshold
        logits[active[done]] = out[done]
        exit_depth[active[done]] = i + 1
        if bool(done.all()):
            break
        active, z = active[~done], z[~done]
    return EarlyExitOutput(logits, exit_depth)


def run_mixed(model: nn.Module, patches: Tensor, grid: tuple[int, int], settings: Sequence[Sequence[int]]) -> Tensor:
    """Outputs of a batch whose images each have their own setting, in one pass.

    Equals :func:`run_patches` per image: the batch runs at its largest token count (by the block
    mask, the first ``t`` latents evolve as in a run at ``t``) and each image's read-out sees only
    its first ``tokens`` latents; widths differ per image through ``sample_hidden`` (units past
    an image's width are zeroed, which equals slicing); images are sorted by depth, deepest first,
    so after block ``j`` the images still running are a prefix of the batch and those whose depth
    is ``j`` are written out and leave it.
    """
    b = patches.shape[0]
    if len(settings) != b:
        raise ValueError(f"{len(settings)} settings for a batch of {b} images")
    dev = patches.device
    order = sorted(range(b), key=lambda i: -settings[i][1])
    t_sorted, d_sorted, w_sorted = ([settings[i][k] for i in order] for k in range(3))
    same_order = order == list(range(b))
    perm = None if same_order else torch.tensor(order, device=dev)
    p = patches if same_order else patches[perm]
    n = max(t_sorted)
    z = model.read_latents(p, n)
    hid = [min(model.resolve_width(w, 1)[0], model.cfg.mlp_hidden) for w in w_sorted]
    hid_t = torch.tensor(hid, device=dev) if min(hid) != max(hid) else None
    outs = []
    active = b
    for i in range(d_sorted[0]):
        h = hid[:active]
        if min(h) == max(h):
            z, _ = run_blocks(model, z, i + 1, h[0], start=i)
        else:
            z, _ = run_blocks(model, z, i + 1, sample_hidden=hid_t[:active], start=i)
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


def active_parameters(model: nn.Module, setting: Sequence[int | None]) -> int:
    """Parameters used by ``model(x, *setting)``: blocks past ``depth`` and FFN hidden units past
    ``int(width * ffn_ratio)`` are not counted; the token count changes no parameter (latents are
    copies of one learned vector) but is checked."""
    _, d, hidden = model.resolve_configuration(*setting)
    total = num_parameters(model)
    for i, blk in enumerate(model.blocks):
        if i >= d:
            total -= sum(p.numel() for p in blk.parameters())
        elif hidden is not None and hidden < blk.mlp.hidden_dim:
            mlp = blk.mlp  # each FFN hidden unit owns a row of fc1 (+ bias) and a column of fc2
            total -= (blk.mlp.hidden_dim - hidden) * (mlp.fc1.in_features + (mlp.fc1.bias is not None) + mlp.fc2.out_features)
    return total


__all__ = ["active_parameters", "run_anytime", "run_blocks", "run_early_exit", "run_mixed", "run_patches"]
