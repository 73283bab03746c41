"""AdaPerceiver: one network whose token count, depth and FFN width are chosen at call time.

Data flow (``x`` of shape ``(B, C, H, W)``)::

    patches = PatchEmbed(x)                            (B, P, D)
    z       = latent_token.expand(B, N, D)
    z       = z + ReadAttn(z <- patches)               RoPE on latent queries
    z       = blocks[:depth](z, block mask, width)     RoPE on q and k
    out     = queries + WriteAttn(queries <- z)        RoPE on latent keys
    y       = head(out)

``AdaPerceiver`` holds the parameters, the checks of a setting and the hooks; every pass (one setting,
anytime, early exit, per-image settings) runs in :mod:`.executor`, the only loop over the blocks.
``AdaPerceiverClassifier`` (one learned output
query, logits) and ``AdaPerceiverDense`` (one query per patch, a feature map) only supply the
output queries and the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import executor
from .config import AdaPerceiverConfig
from .inference import InferenceModel
from .inputs import check_images
from .layers import Block, CrossAttentionBlock, Mlp, PatchEmbed, RotaryEmbedding, hidden_units, layer_norm, trunc_normal_init
from .masks import token_block_mask
from .outputs import AnytimeOutput, EarlyExitOutput, Features
from .setting import Setting, SettingSpace
from .slim import slim

WidthArg = int | Sequence[int] | Tensor | None


class AdaPerceiver(nn.Module):
    """The adaptive backbone and the single forward loop; subclasses add output queries and a head."""

    def __init__(self, cfg: AdaPerceiverConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, d,
                                      hidden_units(d, cfg.ffn_ratio) if cfg.embed_mlp else None)
        self.latent_token = nn.Parameter(torch.zeros(d))
        self.rope = RotaryEmbedding(d // cfg.num_heads, cfg.rope_len, cfg.rope_theta, cfg.rope_scaling)
        self.read = CrossAttentionBlock(d, cfg.num_heads, cfg.qkv_bias, cfg.proj_bias)
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_hidden, cfg.qkv_bias, cfg.proj_bias, cfg.ls_init) for _ in range(cfg.depth)
        )
        if cfg.readout == "query":
            self.write = CrossAttentionBlock(d, cfg.num_heads, cfg.qkv_bias, cfg.proj_bias)
        self._mask_cache: dict[tuple[int, str], Tensor | None] = {}

    # ----------------------------------------------------------------------------------------------
    # initialisation
    def init_weights(self) -> None:
        if self.cfg.init == "trunc_normal":
            trunc_normal_init(self)
        else:  # each linear's and conv's own PyTorch default (as nn.TransformerEncoderLayer starts)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    m.reset_parameters()
        nn.init.trunc_normal_(self.patch_embed.pos_embed, std=0.02, a=-0.04, b=0.04)
        nn.init.normal_(self.latent_token, std=self.cfg.latent_std)
        for blk in self.blocks:
            for ls in (blk.ls1, blk.ls2):
                if hasattr(ls, "gamma"):
                    nn.init.constant_(ls.gamma, float(self.cfg.ls_init))

    # ----------------------------------------------------------------------------------------------
    # runtime configuration: validation with messages that name the allowed values
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def resolve_tokens(self, tokens: int | None) -> int:
        cfg = self.cfg
        if tokens is None:
            return cfg.num_latents
        top = cfg.max_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1 or (top is not None and tokens > top):
            allowed = "a positive int" if top is None else f"an int in [1, {top}]"
            why = ""
            if isinstance(tokens, int) and top is not None and tokens > top:
                why = f"; this model's RoPE table has {top} positions and no rule (rope_scaling) for more"
            raise ValueError(f"tokens must be {allowed} (trained granularities {list(cfg.token_grans)}), got {tokens!r}{why}")
        return tokens

    def resolve_depth(self, depth: int | None) -> int:
        if depth is None:
            return self.num_blocks
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.num_blocks:
            raise ValueError(f"depth must be an int in [1, {self.num_blocks}], got {depth!r}")
        return depth

    def _check_width(self, w: int) -> int:
        cfg = self.cfg
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= cfg.embed_dim or hidden_units(w, cfg.ffn_ratio) < 1:
            lo = next(v for v in range(1, cfg.embed_dim + 1) if hidden_units(v, cfg.ffn_ratio) >= 1)
            raise ValueError(
                f"width must be an int in [{lo}, {cfg.embed_dim}] (embedding units; trained widths {list(cfg.widths)}), got {w!r}"
            )
        return hidden_units(w, cfg.ffn_ratio)

    def resolve_width(self, width: WidthArg, batch_size: int) -> tuple[int | None, Tensor | None]:
        """Return ``(hidden, sample_hidden)``: one FFN hidden count, or one per sample.

        Widths are whole embedding units: ints, or tensors holding whole numbers; a fractional
        value is refused, never truncated.
        """
        if width is None:
            return None, None
        if isinstance(width, Tensor):
            if width.dtype == torch.bool or width.is_complex():
                raise ValueError(f"width must hold whole numbers (embedding units), got a {width.dtype} tensor")
            values = width.detach().flatten().tolist()
            frac = [v for v in values if isinstance(v, float) and not v.is_integer()]
            if frac:
                raise ValueError(f"width must hold whole numbers (embedding units), got {frac[0]:.6g}")
            width = int(values[0]) if width.dim() == 0 else [int(v) for v in values]
        if isinstance(width, (list, tuple)):
            if len(width) != batch_size:
                raise ValueError(f"per-sample width list has {len(width)} entries for a batch of {batch_size}")
            hidden = [min(self._check_width(w), self.cfg.mlp_hidden) for w in width]
            return None, torch.tensor(hidden, device=self.latent_token.device)
        return min(self._check_width(width), self.cfg.mlp_hidden), None

    def check_input(self, x: Tensor) -> Tensor:
        """``x`` checked against the input contract (:func:`.inputs.check_images`), in the model's dtype."""
        cfg = self.cfg
        return check_images(x, cfg.in_chans, cfg.patch_size, self.latent_token.dtype, check_values=not self.training)

    def resolve_token_counts(self, token_counts: Sequence[int] | None, tokens: int) -> tuple[int, ...]:
        """The token counts a pass at ``tokens`` latents reads out: by default the granularities below
        it, and itself; any ints in ``[1, tokens]`` when given (see :meth:`shares_pass` for which of
        them need a pass of their own)."""
        if token_counts is None:
            return tuple(g for g in self.cfg.token_grans if g < tokens) + (tokens,)
        counts = list(token_counts)
        bad = [c for c in counts if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= tokens]
        if not counts or bad:
            raise ValueError(f"token_counts must be ints in [1, {tokens}] (the tokens of this pass), got {counts!r}")
        return tuple(sorted(set(counts)))

    def latent_mask(self, num_tokens: int, device: torch.device) -> Tensor | None:
        key = (num_tokens, str(device))
        if self.cfg.latent_mask == "none":
            return None
        if key not in self._mask_cache:
            self._mask_cache[key] = token_block_mask(num_tokens, self.cfg.token_grans, device, self.cfg.beyond_grans)
        return self._mask_cache[key]

    # ----------------------------------------------------------------------------------------------
    # the forward loop
    def read_latents(self, patches: Tensor, num_tokens: int) -> Tensor:
        z = self.latent_token.to(patches.dtype).expand(patches.shape[0], num_tokens, -1)
        return self.read(z, patches, rope_q=self.rope)

    def run_blocks(self, z: Tensor, depth: int, hidden: int | None = None, sample_hidden: Tensor | None = None,
                   start: int = 0, keep: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
        """Run blocks ``start..depth-1``; also return the states after the (1-based) depths in ``keep``."""
        return executor.run_blocks(self, z, depth, hidden, sample_hidden, start, keep)

    def forward_features(self, x: Tensor, tokens: int | None = None, depth: int | None = None,
                         width: WidthArg = None) -> Features:
        x = self.check_input(x)
        n, d = self.resolve_tokens(tokens), self.resolve_depth(depth)
        hidden, sample_hidden = self.resolve_width(width, x.shape[0])
        patches, grid = self.patch_embed(x)
        z, _ = self.run_blocks(self.read_latents(patches, n), d, hidden, sample_hidden)
        return Features(z, patches, grid)

    def write_out(self, latents: Tensor, patches: Tensor, grid: tuple[int, int],
                  prefixes: Sequence[int] | None = None) -> Tensor:
        """Write latents out through the output queries and the head.

        With ``prefixes``, write out each latent prefix ``latents[:, :g]`` in one attention call;
        the result gains a prefix axis: ``(B, len(prefixes), ...)``.
        """
        queries = self.output_queries(patches)
        if prefixes is None:
            return self.head(self.write(queries, latents, rope_k=self.rope), grid)
        out = self.write.forward_prefixes(queries, latents, prefixes, rope_k=self.rope)  # (B, G, M, D)
        b, g = out.shape[:2]
        out = self.head(out.flatten(0, 1), grid)
        return out.reshape(b, g, *out.shape[1:])

    def write_out_lengths(self, latents: Tensor, patches: Tensor, grid: tuple[int, int], lengths: Tensor) -> Tensor:
        """``write_out`` where image ``i`` reads out only its first ``lengths[i]`` latents (one call for
        a batch whose images ran at different token counts)."""
        keep = torch.arange(latents.shape[1], device=latents.device) < lengths.view(-1, 1)
        queries = self.output_queries(patches)
        return self.head(self.write(queries, latents, rope_k=self.rope, mask=keep[:, None, None, :]), grid)

    def forward_head(self, features: Features) -> Tensor:
        return self.write_out(*features)

    def forward(self, x: Tensor, tokens: int | None = None, depth: int | None = None, width: WidthArg = None) -> Tensor:
        return self.forward_head(self.forward_features(x, tokens, depth, width))

    def forward_patches(self, patches: Tensor, grid: tuple[int, int], setting: Sequence[int]) -> Tensor:
        """``model(x, *setting)`` from the patch embeddings ``patch_embed(x)`` (computed once by a policy)."""
        return executor.run_patches(self, patches, grid, setting)

    def forward_mixed(self, patches: Tensor, grid: tuple[int, int], settings: Sequence[Sequence[int]]) -> Tensor:
        """One output per image, image ``i`` run at ``settings[i]``, in one pass (see :func:`.executor.run_mixed`)."""
        return executor.run_mixed(self, patches, grid, settings)

    def forward_anytime(self, x: Tensor, tokens: int | None = None, width: WidthArg = None,
                        depths: Sequence[int] | None = None, token_counts: Sequence[int] | None = None) -> AnytimeOutput:
        """Outputs for every token granularity and every depth from one backbone pass.

        The backbone runs once at ``tokens`` latents (default: the maximum) and up to the largest of
        ``depths`` (default: all ``1..L``); after each requested depth, every prefix in
        ``token_counts`` (default: the granularities below ``tokens``, then ``tokens``) is written
        out. By the block mask each prefix read-out equals a separate run at that token count; counts
        for which that does not hold (no block mask, an NTK-rescaled RoPE table, latents past the last
        granularity that see all latents) get a backbone pass of their own (see :meth:`shares_pass`).
        """
        return executor.run_anytime(self, x, tokens, width, depths, token_counts)

    def shares_pass(self, count: int, tokens: int) -> bool:
        """Whether a pass at ``tokens`` latents can read out ``count`` from its first ``count`` latents.

        False when a ``count``-latent run computes those latents differently: without the block mask,
        for a count that splits a granularity block,
        under an NTK-scaled RoPE table rebuilt for ``tokens``, or when ``count`` is past the last
        granularity and those latents see all latents of the run (``beyond_grans="all"``).
        """
        cfg = self.cfg
        if count == tokens:
            return True
        if cfg.latent_mask == "none" or (cfg.rope_scaling == "ntk" and tokens > cfg.rope_len):
            return False
        if count < cfg.token_grans[-1] and count not in cfg.token_grans:
            return False  # inside a granularity block: its latents see the rest of their block in a longer pass
        return not (cfg.beyond_grans == "all" and count > cfg.token_grans[-1])

    # ----------------------------------------------------------------------------------------------
    # task hooks
    def build_head(self) -> None:
        """``head_norm`` + ``head_fc``: LN + MLP when ``cfg.head_mlp`` (always full width), else a Linear."""
        d, cfg = self.cfg.embed_dim, self.cfg
        self.head_norm = layer_norm(d) if cfg.head_mlp or cfg.head_norm else nn.Identity()
        self.head_fc = Mlp(d, hidden_units(d, cfg.ffn_ratio), cfg.num_classes) if cfg.head_mlp else nn.Linear(d, cfg.num_classes)

    def output_queries(self, patches: Tensor) -> Tensor:
        raise NotImplementedError

    def head(self, out: Tensor, grid: tuple[int, int]) -> Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------
    # convenience
    @property
    def space(self) -> SettingSpace:
        """The trained settings: granularities up to ``num_latents`` x depths ``1..L`` x trained widths."""
        return SettingSpace(self.cfg.trained_grans, tuple(range(1, self.num_blocks + 1)), self.cfg.widths)

    def configurations(self) -> list[Setting]:
        """The trained grid: every :class:`Setting` of :attr:`space`, tokens outermost."""
        return list(self.space)

    def for_inference(self, dtype: torch.dtype | str | None = torch.float32, compile: bool = False,
                      **kwargs: Any) -> InferenceModel:
        """A copy of this model prepared for fast inference at fixed configurations.

        ``fast = model.for_inference(dtype=torch.bfloat16, compile=True)``; ``fast(x, tokens, depth,
        width)`` runs that configuration as a slim static module in ``dtype`` (with ``compile``,
        compiled once per configuration and batch size) and returns float32. See
        :class:`adaperceiver.models.inference.InferenceModel`.
        """
        return InferenceModel(self, dtype, compile, **kwargs)

    def slim(self, tokens: int, depth: int, width: int) -> "AdaPerceiver":
        """A plain static model of this one configuration with physically sliced weights (see :func:`.slim.slim`)."""
        return slim(self, tokens, depth, width)

    def active_parameters(self, tokens: int | None, depth: int | None, width: int | None) -> int:
        """Parameters that ``model(x, tokens, depth, width)`` uses (blocks past ``depth`` and FFN units past
        the width are not counted)."""
        return executor.active_parameters(self, (tokens, depth, width))

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder (embedding, latents, read, blocks): what a frozen-backbone run freezes."""
        mods = [self.patch_embed, self.read, self.blocks]
        return [self.latent_token] + [p for m in mods for p in m.parameters()]

    def resolve_configuration(self, tokens: int | None, depth: int | None, width: int | None) -> tuple[int, int, int | None]:
        """Check one ``(tokens, depth, width)`` (None: the full value) and return ``(latents, blocks,
        FFN hidden units)``, hidden None for full width; the one check every user of a configuration calls."""
        hidden, _ = self.resolve_width(width, 1)
        return self.resolve_tokens(tokens), self.resolve_depth(depth), hidden

    def no_weight_decay(self) -> set[str]:
        """Names of the matrices that are learned tokens / positions, not weights: no weight decay on them
        (vectors — biases, norms, LayerScale — get none anyway)."""
        return {n for n, _ in self.named_parameters() if n in ("latent_token", "output_query") or n.endswith("pos_embed")}


class AdaPerceiverClassifier(AdaPerceiver):
    """One learned output query written out from the latents, then a Linear (or LN+MLP) to logits.

    With ``cfg.readout == "mean"`` there is no output query and no write cross-attention: the
    logits come from the mean of the latents (of the prefix, for a smaller token count).
    """

    def __init__(self, cfg: AdaPerceiverConfig):
        if cfg.task != "classification":
            raise ValueError(f"AdaPerceiverClassifier needs task='classification', got {cfg.task!r}")
        super().__init__(cfg)
        d = cfg.embed_dim
        if cfg.readout == "query":
            self.output_query = nn.Parameter(torch.zeros(1, d))
        self.build_head()
        self.init_weights()

    def init_weights(self) -> None:
        super().init_weights()
        if self.cfg.readout == "query":
            nn.init.trunc_normal_(self.output_query, std=0.02, a=-0.04, b=0.04)

    def write_out(self, latents: Tensor, patches: Tensor, grid: tuple[int, int],
                  prefixes: Sequence[int] | None = None) -> Tensor:
        if self.cfg.readout == "query":
            return super().write_out(latents, patches, grid, prefixes)
        if prefixes is None:
            return self.head(latents.mean(1, keepdim=True), grid)
        sums = latents.cumsum(1)  # the mean of every prefix from one cumulative sum
        idx = torch.as_tensor([g - 1 for g in prefixes], device=latents.device)
        counts = torch.as_tensor(list(prefixes), dtype=latents.dtype, device=latents.device)
        return self.head_fc(self.head_norm(sums[:, idx] / counts[:, None]))  # (B, G, classes)

    def write_out_lengths(self, latents: Tensor, patches: Tensor, grid: tuple[int, int], lengths: Tensor) -> Tensor:
        if self.cfg.readout == "query":
            return super().write_out_lengths(latents, patches, grid, lengths)
        keep = (torch.arange(latents.shape[1], device=latents.device) < lengths.view(-1, 1)).to(latents.dtype)
        mean = (latents * keep[..., None]).sum(1, keepdim=True) / keep.sum(1).view(-1, 1, 1)
        return self.head(mean, grid)

    def output_queries(self, patches: Tensor) -> Tensor:
        return self.output_query.to(patches.dtype).expand(patches.shape[0], -1, -1)

    def head(self, out: Tensor, grid: tuple[int, int]) -> Tensor:
        return self.head_fc(self.head_norm(out[:, 0]))

    def forward_early_exit(self, x: Tensor, threshold: float, tokens: int | None = None,
                           width: WidthArg = None) -> EarlyExitOutput:
        """Confidence early exit: each sample stops after the first block whose max softmax >= threshold.

        Finished samples leave the batch, so the remaining blocks run on a smaller batch: the
        saving is real per sample at any batch size.
        """
        return executor.run_early_exit(self, x, threshold, tokens, width)


class AdaPerceiverDense(AdaPerceiver):
    """One output query per patch (a projection of the patch tokens): a ``(B, C, h, w)`` feature map."""

    def __init__(self, cfg: AdaPerceiverConfig):
        if cfg.task != "dense":
            raise ValueError(f"AdaPerceiverDense needs task='dense', got {cfg.task!r}")
        super().__init__(cfg)
        d = cfg.embed_dim
        self.query_proj = nn.Linear(d, d)
        self.build_head()
        self.init_weights()

    @property
    def feature_dim(self) -> int:
        return self.cfg.num_classes

    def output_queries(self, patches: Tensor) -> Tensor:
        return self.query_proj(patches)

    def head(self, out: Tensor, grid: tuple[int, int]) -> Tensor:
        feats = self.head_fc(self.head_norm(out))  # (B, P, C)
        return feats.transpose(1, 2).reshape(out.shape[0], -1, *grid)


def build_model(cfg: AdaPerceiverConfig) -> AdaPerceiver:
    """Instantiate the model class that matches ``cfg.task``."""
    return (AdaPerceiverClassifier if cfg.task == "classification" else AdaPerceiverDense)(cfg)


__all__ = ["AdaPerceiver", "AdaPerceiverClassifier", "AdaPerceiverDense", "AnytimeOutput", "EarlyExitOutput", "Features",
           "WidthArg", "build_model"]
