"""The granularity block mask that makes token counts nest.

With granularities ``g1 < g2 < ... < gK``, latent query ``q`` may attend to latent key ``k`` iff
``k < g(q)``, where ``g(q)`` is the first granularity strictly greater than ``q`` (``gK`` for
``q >= gK``). Latents in group ``j`` see their own group and all earlier ones, so the first ``g``
latents of any longer run are exactly the latents of a run with ``g`` tokens.

Latents past the last granularity (``q >= gK``) see only the first ``gK`` latents: not each other,
not themselves. This matches the reference implementation; such counts are outside the trained range.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def group_limits(num_tokens: int, grans: Sequence[int], device=None) -> Tensor:
    """For each latent index, the number of leading latents it may attend to."""
    g = torch.as_tensor(sorted(grans), device=device)
    idx = torch.arange(num_tokens, device=device)
    pos = torch.searchsorted(g, idx, right=True).clamp(max=len(g) - 1)
    return g[pos]


def token_block_mask(num_tokens: int, grans: Sequence[int], device=None) -> Tensor | None:
    """Boolean ``(N, N)`` allow-matrix (True = may attend), or None when every latent sees all."""
    limits = group_limits(num_tokens, grans, device)
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
