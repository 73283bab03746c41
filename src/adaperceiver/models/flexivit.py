"""FlexiViT: one plain ViT that runs at several patch sizes, so one model serves several token counts.

Training draws a patch size per step (uniformly from ``patch_sizes``). The patch-embedding kernel is
stored once, at the finest patch size ``patch_size``, and resampled for a coarser patch ``q`` with the
pseudo-inverse resize (PI-resize): if ``B`` is the linear map that bilinearly resizes a ``p x p`` patch to
``q x q``, the kernel ``w`` becomes ``pinv(B^T) w``. For upsampling (``q >= p``) ``B^T`` has full row rank,
so ``<B x, pinv(B^T) w> = <x, w>`` for every patch ``x``: a resized image gives the same tokens as the
original one. The position table is stored at the finest grid and resampled (bicubic) to the coarser ones.
The idea follows Beyer et al., "FlexiViT: One Model for All Patch Sizes" (CVPR 2023).

``model(x, patch_size=q)`` runs one patch size; as a settings model (what a sweep reads) each patch size
is one ``(tokens, depth, width)`` setting, and ``tokens`` picks the patch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .adaperceiver import AnytimeOutput
from .layers import resample_pos_embed
from .setting import SettingSpace
from .vit import StaticViT, ViTConfig


@lru_cache(maxsize=64)
def _resize_matrix(p: int, q: int) -> Tensor:
    """``B`` of shape ``(q*q, p*p)``: column ``j`` is the bilinear resize of the ``j``-th basis patch."""
    basis = torch.eye(p * p, dtype=torch.float64).reshape(p * p, 1, p, p)
    return F.interpolate(basis, size=(q, q), mode="bilinear", align_corners=False,
                         antialias=q < p).reshape(p * p, q * q).T


@lru_cache(maxsize=64)
def pi_resize_matrix(p: int, q: int) -> Tensor:
    """``pinv(B^T)`` of shape ``(q*q, p*p)`` (float64): maps a flattened ``p x p`` kernel to ``q x q``."""
    return torch.linalg.pinv(_resize_matrix(p, q).T)


def resize_patch(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of patches ``(..., p, p)`` to ``(..., size, size)``: the ``B`` that PI-resize inverts."""
    p = x.shape[-1]
    flat = x.reshape(-1, p * p).double() @ _resize_matrix(p, size).T.to(x.device)
    return flat.reshape(*x.shape[:-2], size, size).to(x.dtype)


def pi_resize(kernel: Tensor, size: int) -> Tensor:
    """PI-resize a conv kernel ``(out, in, p, p)`` to ``(out, in, size, size)``, differentiably."""
    p = kernel.shape[-1]
    if kernel.shape[-2] != p:
        raise ValueError(f"pi_resize takes square kernels, got {tuple(kernel.shape[-2:])}")
    if size == p:
        return kernel
    m = pi_resize_matrix(p, size).to(kernel.device, kernel.dtype)
    return (kernel.flatten(-2) @ m.T).unflatten(-1, (size, size))


@dataclass
class FlexiViTConfig(ViTConfig):
    # the patch sizes trained and served; the finest is ``patch_size`` (where kernel and positions are stored)
    patch_sizes: tuple[int, ...] = field(default=(4, 7, 14), metadata=dict(
        group="flexivit", help="patch sizes drawn per training step (each a setting at inference)"))
    pool: str = "cls"

    def __post_init__(self) -> None:
        self.patch_sizes = tuple(sorted({int(p) for p in self.patch_sizes}))
        super().__post_init__()
        bad = [p for p in self.patch_sizes if p < 1 or self.img_size % p]
        if bad:
            raise ValueError(f"flexivit config: patch sizes {bad} do not divide img_size {self.img_size}")
        if self.patch_sizes[0] != self.patch_size:
            raise ValueError(f"flexivit config: patch_size {self.patch_size} must be the finest of patch_sizes "
                             f"{list(self.patch_sizes)} (the kernel is stored there and only upsampled)")

    def tokens_of(self, patch: int) -> int:
        return (self.img_size // patch) ** 2

    @property
    def token_grans(self) -> tuple[int, ...]:
        return tuple(sorted(self.tokens_of(p) for p in self.patch_sizes))


class FlexiViT(StaticViT):
    """A plain ViT (class token by default) whose patch size is drawn per training step (see the module doc).

    Parameters are those of :class:`StaticViT` at the finest patch size; ``patch_size=`` (or ``tokens=``)
    at call time picks the setting. In train mode a call without either draws the patch size from
    torch's global generator, so a seeded run is reproducible.
    """

    def __init__(self, cfg: FlexiViTConfig):
        super().__init__(cfg)
        self.cfg: FlexiViTConfig = cfg

    def patch_size_of(self, tokens: int | None = None, patch_size: int | None = None) -> int:
        """The patch size of a call: given, from the token count, drawn (training) or the finest (eval)."""
        cfg = self.cfg
        if patch_size is not None and tokens is not None:
            raise ValueError("give patch_size or tokens, not both")
        if tokens is not None:
            by_tokens = {cfg.tokens_of(p): p for p in cfg.patch_sizes}
            if tokens not in by_tokens:
                raise ValueError(f"FlexiViT runs token counts {sorted(by_tokens)}, not {tokens}")
            return by_tokens[tokens]
        if patch_size is None:
            if not self.training:
                return cfg.patch_size
            return cfg.patch_sizes[int(torch.randint(len(cfg.patch_sizes), ()))]
        if patch_size not in cfg.patch_sizes:
            raise ValueError(f"FlexiViT runs patch sizes {list(cfg.patch_sizes)}, not {patch_size}")
        return patch_size

    def embed(self, x: Tensor, patch: int) -> Tensor:
        """Patch tokens at patch size ``patch`` (PI-resized kernel, resampled positions)."""
        pe = self.patch_embed
        pe.check_input(x)
        if x.shape[-1] % patch or x.shape[-2] % patch:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {patch}")
        z = F.conv2d(x, pi_resize(pe.proj.weight, patch), pe.proj.bias, stride=patch)
        grid = (z.shape[-2], z.shape[-1])
        return z.flatten(2).transpose(1, 2) + resample_pos_embed(pe.pos_embed, pe.grid, grid)

    def forward_features(self, x: Tensor, patch_size: int | None = None) -> Tensor:
        z = self.embed(x, self.patch_size_of(patch_size=patch_size))
        if self.cfg.pool == "cls":
            z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1).to(z.dtype), z], 1)
        for blk in self.blocks:
            z = blk(z, rope=None)
        return self.norm(z)

    def forward(self, x: Tensor, tokens: int | None = None, depth: int | None = None, width: int | None = None,
                patch_size: int | None = None) -> Tensor:
        if tokens is not None or depth is not None or width is not None:
            tokens = self.resolve_configuration(tokens, depth, width)[0]
        return self.forward_head(self.forward_features(x, self.patch_size_of(tokens, patch_size)))

    @torch.no_grad()
    def at_setting(self, tokens: int | None = None, depth: int | None = None, width: int | None = None) -> StaticViT:
        """A plain :class:`StaticViT` at one setting's patch size, its kernel PI-resized and positions resampled
        once: the same outputs as ``self(x, tokens)`` without resizing on every call (how a FlexiViT is deployed)."""
        patch = self.patch_size_of(self.resolve_configuration(tokens, depth, width)[0]) if tokens is not None \
            else self.cfg.patch_size
        base = {f.name: getattr(self.cfg, f.name) for f in fields(ViTConfig)}
        static = StaticViT(ViTConfig(**{**base, "patch_size": patch}))
        state = dict(self.state_dict())
        pe = self.patch_embed
        state["patch_embed.proj.weight"] = pi_resize(pe.proj.weight, patch)
        state["patch_embed.pos_embed"] = resample_pos_embed(pe.pos_embed, pe.grid, static.patch_embed.grid)
        static.load_state_dict(state)
        return static.to(pe.proj.weight.device, pe.proj.weight.dtype).eval()

    @property
    def space(self) -> SettingSpace:
        """One ``(tokens, depth, width)`` setting per patch size: the token counts x every block x full width."""
        return SettingSpace(tuple(sorted(self.cfg.token_grans)), (self.num_blocks,), (self.cfg.embed_dim,))

    def forward_anytime(self, x: Tensor, tokens=None, width=None, depths=None, token_counts=None) -> AnytimeOutput:
        """Training: one read-out at a drawn patch size. Eval: one read-out per token count asked
        (default all), stacked on the token axis as the adaptive models do."""
        self.check_anytime(width, depths)
        if self.training:
            patch = self.patch_size_of()
            return AnytimeOutput(self(x, patch_size=patch)[None, None], (self.num_blocks,),
                                 (self.cfg.tokens_of(patch),))
        counts = tuple(token_counts) if token_counts is not None else self.cfg.token_grans
        outs = torch.stack([self(x, tokens=t) for t in counts])
        return AnytimeOutput(outs[None], (self.num_blocks,), counts)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"architecture": "flexivit"}


def build_architecture(name: str, cfg: None, meta: dict[str, Any]) -> FlexiViT:
    """Rebuild a saved FlexiViT (``checkpoint.from_pretrained`` calls this)."""
    if name != "flexivit":
        raise ValueError(f"adaperceiver.models.flexivit builds 'flexivit', not {name!r}")
    return FlexiViT(FlexiViTConfig(**meta["model"]))


__all__ = ["FlexiViT", "FlexiViTConfig", "build_architecture", "pi_resize", "pi_resize_matrix", "resize_patch"]
