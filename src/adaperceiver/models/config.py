"""The configuration of an AdaPerceiver model: every constructor argument, saved next to its weights."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import check_fields, from_known_fields
from .layers import RotaryEmbedding, hidden_units
from .masks import BEYOND_GRANS

# allowed ranges of the numeric config fields (types come from the annotations; NaN/inf are always refused).
# The float ranges bound what trains at all: rope_theta below 1 or far above the usual 1e4-1e6 makes the
# rotary frequencies overflow or vanish (1e-300 trains to NaN), init scales above 10 blow up the first steps.
MODEL_CONFIG_RANGES = {
    "num_classes": ">= 1", "img_size": ">= 1", "patch_size": ">= 1", "in_chans": ">= 1", "embed_dim": ">= 1",
    "depth": ">= 1", "num_heads": ">= 1", "ffn_ratio": "(0, 64]", "mlp_hidden_dim": ">= 1", "num_latents": ">= 1",
    "max_latents_mult": ">= 1", "token_grans": ">= 1", "widths": ">= 1", "rope_theta": "[1, 1e9]", "ls_init": "[0, 10]",
    "latent_std": "[0, 10]",
}


# experiment flags that lost their ablations (docs/training.md, "Learning efficiency") and were removed
# in 0.2, with the value every config had unless the experiment was on
REMOVED_MODEL_FIELDS = {"embed_residual": False, "latent_pos_std": 0.0, "read_mlp": False}


def drop_removed_fields(d: dict[str, Any], removed: dict[str, Any], what: str) -> dict[str, Any]:
    """``d`` without the ``removed`` fields of an older config, with a one-line note; a removed field set
    to anything but its old default is refused (this version cannot build what it describes)."""
    present = [k for k in removed if k in d]
    if not present:
        return d
    on = {k: d[k] for k in present if d[k] != removed[k]}
    if on:
        raise ValueError(f"{what} sets {on}: these experiment options were removed in adaperceiver 0.2 (they "
                         f"lost their ablations, docs/training.md); a model trained with them needs adaperceiver 0.1")
    warnings.warn(f"{what}: dropped the removed fields {present} (at their defaults, so nothing changes)",
                  FutureWarning, stacklevel=3)
    return {k: v for k, v in d.items() if k not in removed}


@dataclass
class AdaPerceiverConfig:
    """Every constructor argument of an AdaPerceiver model (saved next to its weights)."""

    task: str = "classification"  # "classification" (logits) or "dense" (per-patch features)
    num_classes: int = 10  # classification: classes; dense: feature channels per patch
    img_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    ffn_ratio: float = 2.0
    mlp_hidden_dim: int | None = None  # overrides int(embed_dim * ffn_ratio) for the latent blocks
    num_latents: int = 32  # trained maximum token count (the default count of a call)
    max_latents_mult: int | None = 2  # RoPE table of num_latents * max_latents_mult positions (unless rope_base_len)
    token_grans: tuple[int, ...] = (8, 16, 32)
    widths: tuple[int, ...] = ()  # trained Matryoshka widths; () -> (D/2, 3D/4, D)
    rope_theta: float = 10000.0
    qkv_bias: bool = True
    proj_bias: bool = True
    ls_init: float | None = 1e-5  # LayerScale start value; None or 0: no LayerScale
    embed_mlp: bool = True
    head_mlp: bool = False  # LN + MLP before the output (dense default), else a Linear
    latent_std: float = 0.02
    latent_mask: str = "block"  # "block" (granularity mask) or "none" (all-to-all, the reference's 'full' layer)
    # token counts above the trained ones (docs/reference.md, "Token counts above the trained maximum"):
    rope_base_len: int | None = None  # positions of the unscaled RoPE table; None -> num_latents * max_latents_mult
    rope_scaling: str = "none"  # above rope_base_len: "none" refuses, "ntk" divides every inverse frequency by N / base
    beyond_grans: str = "first_gk"  # latents past the last granularity see: "first_gk" (the first g_K) or "all" (all N)
    # learning-efficiency options (docs/training.md, "Learning efficiency"); the defaults are the reference
    readout: str = "query"  # classification read-out: "query" (cross-attention of one query) or "mean" of latents
    head_norm: bool = False  # LayerNorm before the classifier Linear
    # weights of linears and the patch conv: "trunc_normal" (std 0.02, the reference) or "torch" (each layer's
    # PyTorch default, fan-in uniform: +1.7 pp after 700 steps at width 64, docs/paper_claims.md)
    init: str = "trunc_normal"

    def __post_init__(self) -> None:
        check_fields(self, MODEL_CONFIG_RANGES, "model config")  # every field's type and range, up front
        self.widths = self.widths or self.default_widths()
        if self.latent_mask not in ("block", "none"):
            raise ValueError(f"latent_mask must be 'block' or 'none', got {self.latent_mask!r}")
        if self.rope_scaling not in RotaryEmbedding.SCALINGS:
            raise ValueError(f"rope_scaling must be one of {list(RotaryEmbedding.SCALINGS)}, got {self.rope_scaling!r}")
        if self.beyond_grans not in BEYOND_GRANS:
            raise ValueError(f"beyond_grans must be one of {list(BEYOND_GRANS)}, got {self.beyond_grans!r}")
        if self.rope_base_len is None and not self.max_latents_mult:
            raise ValueError("the RoPE table length is unknown: set rope_base_len or max_latents_mult")
        if self.rope_len < 1:
            raise ValueError(f"the RoPE table needs at least one position, got {self.rope_len}")
        if self.init not in ("trunc_normal", "torch"):
            raise ValueError(f"init must be 'trunc_normal' or 'torch', got {self.init!r}")
        if self.task not in ("classification", "dense"):
            raise ValueError(f"task must be 'classification' or 'dense', got {self.task!r}")
        if self.readout not in ("query", "mean") or (self.readout == "mean" and self.task != "classification"):
            raise ValueError(f"readout must be 'query' or (classification only) 'mean', got {self.readout!r} "
                             f"for task {self.task!r}")
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 2:
            raise ValueError(f"embed_dim {self.embed_dim} must split into {self.num_heads} heads of even size")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        grans = self.token_grans
        if not grans or list(grans) != sorted(set(grans)) or grans[0] < 1:
            raise ValueError(f"token_grans must be increasing positive ints, got {grans}")
        top = self.max_tokens
        if top is not None and max(grans[-1], self.num_latents) > top:
            raise ValueError(f"token_grans {list(grans)} and num_latents ({self.num_latents}) must stay within the "
                             f"RoPE table ({top} positions)")
        for w in self.widths:
            if not 1 <= w <= self.embed_dim or hidden_units(w, self.ffn_ratio) < 1:
                raise ValueError(f"trained width {w} must be in [1, {self.embed_dim}] and give >= 1 hidden unit "
                                 f"(int(width * ffn_ratio), ffn_ratio {self.ffn_ratio:g})")

    def default_widths(self) -> tuple[int, ...]:
        d = self.embed_dim
        return tuple(sorted({d // 2, (3 * d) // 4, d}))

    @property
    def trained_grans(self) -> tuple[int, ...]:
        """Granularities up to ``num_latents``: the token counts a sweep or policy chooses from."""
        return tuple(g for g in self.token_grans if g <= self.num_latents)

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_hidden_dim or hidden_units(self.embed_dim, self.ffn_ratio)

    @property
    def rope_len(self) -> int:
        """Positions of the unscaled RoPE table."""
        return self.rope_base_len if self.rope_base_len is not None else self.num_latents * self.max_latents_mult

    @property
    def max_tokens(self) -> int | None:
        """Most latents a call may use: the RoPE table, or None (any number) under NTK scaling."""
        return None if self.rope_scaling == "ntk" else self.rope_len

    def static_config(self, tokens: int, depth: int, width: int) -> "AdaPerceiverConfig":
        """Config of a fixed-shape model equal to this one run at ``(tokens, depth, width)``.

        The static model has ``tokens`` latents, ``depth`` blocks and ``int(width * ffn_ratio)``
        FFN hidden units; it keeps the granularities below ``tokens`` so the block mask (and so
        the math) is the same, but nothing is sliced or chosen at run time.
        """
        top = self.max_tokens
        if not 1 <= tokens <= (top or tokens) or not 1 <= depth <= self.depth or not 1 <= width <= self.embed_dim:
            raise ValueError(f"static config needs tokens in [1, {top or 'any'}], depth in [1, {self.depth}], "
                             f"width in [1, {self.embed_dim}]; got ({tokens}, {depth}, {width})")
        grans = tuple(g for g in self.token_grans if g < tokens) + (tokens,)
        hidden = min(hidden_units(width, self.ffn_ratio), self.mlp_hidden)
        # an NTK-scaled table keeps its base length, so the static model rotates as this one does at `tokens`
        base = self.rope_len if self.rope_scaling == "ntk" else None
        return dataclasses.replace(self, num_latents=tokens, token_grans=grans, depth=depth, mlp_hidden_dim=hidden,
                                   widths=(self.embed_dim,), max_latents_mult=1, rope_base_len=base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdaPerceiverConfig":
        d = drop_removed_fields(d, REMOVED_MODEL_FIELDS, "model config")
        return from_known_fields(cls, d, "config")


__all__ = ["AdaPerceiverConfig", "MODEL_CONFIG_RANGES"]
