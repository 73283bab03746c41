"""What the adaptive models return besides a plain tensor: backbone features, anytime and early-exit read-outs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor


class Features(NamedTuple):
    """What the backbone hands to a head: latents after the blocks, the patch tokens, the patch grid."""

    latents: Tensor  # (B, N, D)
    patches: Tensor  # (B, P, D)
    grid: tuple[int, int]


@dataclass
class AnytimeOutput:
    """Read-outs for several (depth, tokens) configurations from one backbone pass.

    ``outputs[i, j]`` is the model output at ``depths[i]`` blocks and the first ``tokens[j]``
    latents; it equals ``model(x, tokens=tokens[j], depth=depths[i], width=...)``.
    """

    outputs: Tensor  # (len(depths), len(tokens), B, ...)
    depths: tuple[int, ...]
    tokens: tuple[int, ...]
    # what the read-outs were written from, for extra heads (e.g. distillation features)
    states: Tensor | None = None  # (len(depths), B, N, D) latents after each depth
    patches: Tensor | None = None  # (B, P, D)
    grid: tuple[int, int] | None = None

    def get(self, tokens: int, depth: int) -> Tensor:
        if tokens not in self.tokens or depth not in self.depths:
            raise KeyError(f"no read-out for tokens={tokens}, depth={depth}; have tokens {self.tokens}, depths {self.depths}")
        return self.outputs[self.depths.index(depth), self.tokens.index(tokens)]


@dataclass
class EarlyExitOutput:
    logits: Tensor  # (B, num_classes)
    exit_depth: Tensor  # (B,) number of blocks each sample ran

__all__ = ["AnytimeOutput", "EarlyExitOutput", "Features"]
