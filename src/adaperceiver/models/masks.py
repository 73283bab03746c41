"""The granularity block mask that makes token counts nest.

With granularities ``g1 < g2 < ... < gK``, latent query ``q`` may attend to latent key ``k`` iff
``k < g(q)``, where ``g(q)`` is the first granularity strictly greater than ``q`` (for ``q >= gK``
see below). Latents in group ``j`` see their own group and all earlier ones, so the first ``g``
latents of any longer run are exactly the latents of a run with ``g`` tokens.

Latents past the last granularity (``q >= gK``, a token count above the trained ones) follow one
of two rules, as the model's source did:

- ``"first_gk"`` (the reference training code): they see only the first ``gK`` latents, not each
  other, not themselves;
- ``"all"`` (the released hub model, which appends ``N`` as a last granularity): they see all ``N``
  latents.

Up to ``gK`` the two rules give the same mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

BEYOND_GRANS = ("first_gk", "all")


def group_limits(num_tokens: int, grans: Sequence[int], device=None, beyond: str = "first_gk") -> Tensor:
    """For each latent index, the number of leading latents it may attend to."""
    if beyond not in BEYOND_GRANS:
        raise ValueError(f"rule for latents past the last granularity must be one of {list(BEYOND_GRANS)}, got {beyond!r}")
    g = torch.as_tensor(sorted(grans), device=device)
    idx = torch.arange(num_tokens, device=device)
    pos = torch.searchsorted(g, idx, right=True)
    limits = g[pos.clamp(max=len(g) - 1)]
    if beyond == "all":
        limits = torch.where(pos >= len(g), num_tokens, limits)
    return limits


def token_block_mask(num_tokens: int, grans: Sequence[int], device=None, beyond: str = "first_gk") -> Tensor | None:
    """Boolean ``(N, N)`` allow-matrix (True = may attend), or None when every latent sees all.

    ``beyond`` is the rule for latents past the last granularity (see the module docstring).
    """
    limits = group_limits(num_tokens, grans, device, beyond)
    if bool((limits >= num_tokens).all()):
        return None
    return torch.arange(num_tokens, device=device).view(1, -1) < limits.view(-1, 1)


def prefix_mask(prefixes: Sequence[int], num_queries: int, num_keys: int, device=None) -> Tensor:
    """Mask for writing out several latent prefixes at once.

    The queries are repeated once per prefix (``len(prefixes) * num_queries`` rows); the rows of
    prefix ``g`` may attend to keys ``0..g-1`` only, which equals attending over ``latents[:, :g]``.
    """
    limits = torch.as_tensor(list(prefixes), device=device).repeat_interleave(num_queries)
    return torch.arange(num_keys, device=device).view(1, -1) < limits.view(-1, 1)


__all__ = ["BEYOND_GRANS", "group_limits", "prefix_mask", "token_block_mask"]
