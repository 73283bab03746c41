"""A static (non-adaptive) ViT: the simplest strong teacher to train for distillation.

It offers the trainable-model interface of the adaptive models with a single read-out, so the one
training engine trains it; :mod:`adaperceiver.training.teachers` wraps it as a teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import check_fields
from .adaperceiver import AnytimeOutput
from .inference import PeerInference
from .layers import Block, PatchEmbed, hidden_units, layer_norm, trunc_normal_init
from .setting import Setting, SettingSpace


@dataclass
class ViTConfig:
    img_size: int = 28
    patch_size: int = field(default=4, metadata=dict(group="vit teacher", help="patch size"))
    in_chans: int = 1
    embed_dim: int = field(default=128, metadata=dict(group="vit teacher", help="width"))
    depth: int = field(default=6, metadata=dict(group="vit teacher", help="blocks"))
    num_heads: int = field(default=4, metadata=dict(group="vit teacher", help="attention heads"))
    mlp_ratio: float = field(default=3.0, metadata=dict(group="vit teacher", help="MLP hidden / width"))
    num_classes: int = 10
    pool: str = "mean"  # logits from the mean of the patch tokens, or "cls": from a prepended class token
    # weight init of linears and the patch conv: "torch" (PyTorch's default fan-in uniform, as
    # nn.TransformerEncoderLayer) or "trunc_normal" (std 0.02, as timm); positions and class token are
    # N(0, 0.02) in both. At this width "torch" learns faster: 84.56 vs 82.80 % after 700 steps
    # (docs/paper_claims.md, "Baseline strength")
    init: str = "torch"

    def __post_init__(self) -> None:
        check_fields(self, {"img_size": ">= 1", "patch_size": ">= 1", "in_chans": ">= 1", "embed_dim": ">= 1",
                            "depth": ">= 1", "num_heads": ">= 1", "mlp_ratio": "> 0", "num_classes": ">= 1"},
                     "teacher config")
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"teacher config: pool must be 'mean' or 'cls', got {self.pool!r}")
        if self.init not in ("trunc_normal", "torch"):
            raise ValueError(f"teacher config: init must be 'trunc_normal' or 'torch', got {self.init!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"teacher config: embed_dim {self.embed_dim} does not split into {self.num_heads} heads")
        if self.img_size % self.patch_size:
            raise ValueError(f"teacher config: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # what the training objective reads from a model config (one fixed configuration)
    @property
    def num_latents(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def token_grans(self) -> tuple[int, ...]:
        return (self.num_latents,)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.embed_dim,)


class StaticViT(nn.Module):
    """Plain pre-norm ViT over patch tokens (no latents, no adaptivity), mean-pooled (or class token) to logits.

    ``forward_features`` returns the final normalised tokens, the class token first when there is one
    (``num_prefix_tokens``, as in timm); the patch tokens serve as the teacher's features.
    It offers the trainable-model interface with a single read-out (``forward_anytime``), so the
    shared training engine trains it with ``ObjectiveConfig.static()``.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, d, mlp_hidden=None)
        hidden = hidden_units(d, cfg.mlp_ratio)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, hidden, ls_init=None) for _ in range(cfg.depth))
        self.norm = layer_norm(d)
        self.head = nn.Linear(d, cfg.num_classes)
        if cfg.pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if cfg.init == "trunc_normal":
            trunc_normal_init(self)
        nn.init.trunc_normal_(self.patch_embed.pos_embed, std=0.02, a=-0.04, b=0.04)
        if cfg.pool == "cls":
            nn.init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.cfg.pool == "cls" else 0

    def forward_features(self, x: Tensor) -> Tensor:
        z, _ = self.patch_embed(x)
        if self.cfg.pool == "cls":
            z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1).to(z.dtype), z], 1)
        for blk in self.blocks:
            z = blk(z, rope=None)
        return self.norm(z)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.head(feats[:, 0] if self.cfg.pool == "cls" else feats.mean(1))

    def forward(self, x: Tensor, tokens: int | None = None, depth: int | None = None,
                width: int | None = None) -> Tensor:
        """Logits; ``tokens`` / ``depth`` / ``width``, when given, must name the one setting this model has."""
        self.resolve_configuration(tokens, depth, width)
        return self.forward_head(self.forward_features(x))

    def at_setting(self, tokens: int | None = None, depth: int | None = None, width: int | None = None) -> nn.Module:
        """A module computing ``self(x, tokens, depth, width)`` as ``x -> output`` (what fast inference compiles):
        this model itself, after the setting is checked."""
        self.resolve_configuration(tokens, depth, width)
        return self

    def for_inference(self, dtype: torch.dtype | str | None = torch.float32, compile: bool = False,
                      **kwargs: Any) -> PeerInference:
        """A copy for fast inference, as :meth:`AdaPerceiver.for_inference` (``dtype``, ``compile`` once per
        setting and batch size); so a peer is timed in the same mode as the adaptive model."""
        return PeerInference(self, dtype, compile, **kwargs)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    # the settings interface of the adaptive models (sweeps, executor, dense task models): one setting
    @property
    def space(self) -> SettingSpace:
        """The settings this model runs: here the single full one (every patch, every block, full width)."""
        return SettingSpace((self.cfg.num_latents,), (self.num_blocks,), (self.cfg.embed_dim,))

    def configurations(self) -> list[Setting]:
        """Every ``(tokens, depth, width)`` of :attr:`space`, fewest tokens first."""
        return list(self.space)

    def resolve_tokens(self, tokens: int | None) -> int:
        return self.resolve_configuration(tokens, None, None)[0]

    def resolve_depth(self, depth: int | None) -> int:
        return self.resolve_configuration(None, depth, None)[1]

    def resolve_width(self, width: Any, batch_size: int) -> tuple[int | None, None]:
        """``(FFN hidden units, None)`` as :meth:`AdaPerceiver.resolve_width`; only the full width exists."""
        if width is None:
            return None, None
        if isinstance(width, Tensor):
            values = width.unique().tolist()
            if len(values) != 1 or values[0] != int(values[0]):
                raise ValueError(f"{type(self).__name__} has one width ({self.cfg.embed_dim}), got per-sample widths {values}")
            width = int(values[0])
        return self.resolve_configuration(None, None, width)[2], None

    def resolve_configuration(self, tokens: int | None, depth: int | None,
                              width: int | None) -> tuple[int, int, int]:
        """``(tokens, depth, FFN hidden units)`` of a setting, defaults filled in; any other setting is refused."""
        full = self.space.full
        t = full[0] if tokens is None else tokens
        d, w = (full[1] if depth is None else depth), (full[2] if width is None else width)
        if (t, d, w) not in self.configurations():
            raise ValueError(f"{type(self).__name__} runs (tokens, depth, width) in {[tuple(c) for c in self.space]}, "
                             f"not {(t, d, w)}")
        return t, d, hidden_units(w, self.cfg.mlp_ratio)

    def forward_anytime(self, x: Tensor, tokens=None, width=None, depths=None, token_counts=None) -> AnytimeOutput:
        """The one read-out this static model has, in the adaptive models' layout."""
        self.check_anytime(width, depths)
        return AnytimeOutput(self(x)[None, None], (self.num_blocks,), (self.cfg.num_latents,))

    def check_anytime(self, width: Any, depths: Any) -> None:
        """Refuse read-outs this model does not have: only the full depth and width exist."""
        if (width is not None and not (isinstance(width, int) and width == self.cfg.embed_dim)) or (
                depths is not None and tuple(depths) != (self.num_blocks,)):
            raise ValueError(f"{type(self).__name__} has a single configuration of depth and width ({self.num_blocks}, "
                             f"{self.cfg.embed_dim}): train it with ObjectiveConfig.static()")

    def no_weight_decay(self) -> set[str]:
        return {"patch_embed.pos_embed"}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"architecture": "static_vit"}


class ViTDense(StaticViT):
    """A plain ViT as a dense backbone, the segmenter / depth baseline beside :class:`AdaPerceiverDense`.

    ``head`` is the per-patch feature layer (``num_classes`` = feature channels, as in a dense
    AdaPerceiver config): ``forward`` returns ``(B, num_classes, h, w)`` maps on the patch grid, so the
    same task heads (:mod:`adaperceiver.models.heads`) sit on either backbone.
    """

    @property
    def feature_dim(self) -> int:
        return self.cfg.num_classes

    def forward_head(self, feats: Tensor) -> Tensor:
        tokens = self.head(feats[:, self.num_prefix_tokens:])  # (B, h*w, C)
        g = self.cfg.img_size // self.cfg.patch_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, g, g)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Everything but the per-patch feature layer."""
        head = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head]


def build_architecture(name: str, cfg: None, meta: dict[str, Any]) -> StaticViT:
    """Rebuild a saved static ViT (``checkpoint.from_pretrained`` calls this)."""
    if name != "static_vit":
        raise ValueError(f"adaperceiver.models.vit builds 'static_vit', not {name!r}")
    return StaticViT(ViTConfig(**meta["model"]))


__all__ = ["StaticViT", "ViTConfig", "ViTDense", "build_architecture"]
