"""Building blocks of AdaPerceiver: attention with RoPE, the Matryoshka MLP, blocks, patch embedding.

Shape conventions: tokens are ``(B, N, D)``; attention heads are ``(B, H, N, head_dim)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import prefix_mask

LN_EPS = 1e-6  # timm's LayerNorm eps, which the reference model uses


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LN_EPS)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over interleaved channel pairs ``(x0, x1), (x2, x3), ...``.

    Pair ``j`` of a head is rotated by ``pos * theta**(-2j / head_dim)``. The table holds
    ``base_len`` positions (a non-persistent buffer: recomputed, never stored in checkpoints).
    What happens for more positions is the ``scaling`` rule:

    - ``"none"`` (the reference training code): refused;
    - ``"ntk"`` (the released hub model): a table for the ``N`` positions is built with every
      inverse frequency divided by ``s = N / base_len``.

    The rotation is one complex multiply: each pair is viewed as ``x0 + i x1`` and multiplied by
    ``cos + i sin`` (the same products and sums as the real formula, one kernel instead of six plus
    a stack). The complex table of a length and device is built once and cached; it is rebuilt
    when the buffers change (moved, cast or edited in place). Under ``torch.compile`` the real
    formula is traced instead, which the compiler fuses into one kernel.
    """

    SCALINGS = ("none", "ntk")

    def __init__(self, head_dim: int, base_len: int, theta: float = 10000.0, scaling: str = "none"):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        if scaling not in self.SCALINGS:
            raise ValueError(f"RoPE scaling must be one of {list(self.SCALINGS)}, got {scaling!r}")
        self.head_dim, self.theta = head_dim, theta
        self.base_len = base_len
        self.scaling = scaling
        cos, sin = self.build_table(base_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self._tables: dict[tuple[int, torch.device], Tensor] = {}
        self._tables_of: tuple[int, ...] | None = None

    def build_table(self, n: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` of shape ``(n, head_dim/2)`` in float32: the one place the scaling rule lives."""
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim))
        if n > self.base_len:
            if self.scaling != "ntk":
                raise ValueError(f"RoPE table has {self.base_len} positions, asked for {n}")
            inv_freq = inv_freq / (n / self.base_len)
        angles = torch.outer(torch.arange(n, dtype=torch.float32, device=device), inv_freq)
        return angles.cos(), angles.sin()

    def cos_sin(self, n: int) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` for positions ``0..n-1`` of a sequence of ``n`` positions."""
        if n <= self.base_len:
            return self.cos[:n], self.sin[:n]
        return self.build_table(n, self.cos.device)

    def table(self, n: int) -> Tensor:
        """``cos + i sin`` for a sequence of ``n`` positions: complex64 ``(n, head_dim / 2)``, cached."""
        src = tuple(v for t in (self.cos, self.sin) for v in (t.data_ptr(), -1 if t.is_inference() else t._version))
        if src != self._tables_of:
            self._tables, self._tables_of = {}, src
        key = (n, self.cos.device)
        if key not in self._tables:
            cos, sin = self.cos_sin(n)
            self._tables[key] = torch.complex(cos.float(), sin.float())
        return self._tables[key]

    def forward(self, x: Tensor) -> Tensor:
        """Rotate ``x`` of shape ``(B, H, N, head_dim)`` at positions ``0..N-1`` (in float32)."""
        n = x.shape[-2]
        if torch.compiler.is_compiling():  # a graph compiler fuses the real form into one kernel
            cos, sin = self.cos_sin(n)
            a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
            return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)
        xf = x.float()
        if xf.stride(-1) != 1 or any(st % 2 for st in xf.stride()[:-1]):
            xf = xf.contiguous()
        pairs = torch.view_as_complex(xf.unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * self.table(n)).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections and optional RoPE on q and/or k.

    Used for latent self-attention (``kv is None``) and for the read/write cross-attentions.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, kv: Tensor, rope: RotaryEmbedding | None = None) -> tuple[Tensor, Tensor]:
        k = self._heads(self.k(kv))
        if rope is not None:
            k = rope(k)
        return k, self._heads(self.v(kv))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, rope_q: RotaryEmbedding | None = None,
               mask: Tensor | None = None) -> Tensor:
        """Attention of queries from ``x`` over already projected keys/values."""
        q = self._heads(self.q(x))
        if rope_q is not None:
            q = rope_q(q)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).flatten(-2))

    def forward(self, x: Tensor, kv: Tensor | None = None, rope_q: RotaryEmbedding | None = None,
                rope_k: RotaryEmbedding | None = None, mask: Tensor | None = None) -> Tensor:
        k, v = self.project_kv(x if kv is None else kv, rope_k)
        return self.attend(x, k, v, rope_q, mask)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 whose hidden units are ordered (Matryoshka).

    ``hidden`` keeps the first ``hidden`` units by slicing the weights (real savings);
    ``sample_hidden`` (one count per sample) zeroes units past each sample's count, which equals
    slicing per sample and lets one batch train several widths. fc2's bias is always used whole.
    """

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: Tensor, hidden: int | None = None, sample_hidden: Tensor | None = None) -> Tensor:
        if sample_hidden is not None:
            h = self.act(self.fc1(x))
            keep = torch.arange(self.hidden_dim, device=x.device) < sample_hidden.view(-1, 1)
            h = h * keep.view(keep.shape[0], *([1] * (h.dim() - 2)), self.hidden_dim).to(h.dtype)
            return self.fc2(h)
        if hidden is None or hidden >= self.hidden_dim:
            return self.fc2(self.act(self.fc1(x)))
        h = F.linear(x, self.fc1.weight[:hidden], self.fc1.bias[:hidden] if self.fc1.bias is not None else None)
        return F.linear(self.act(h), self.fc2.weight[:, :hidden], self.fc2.bias)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block over latents: masked self-attention (RoPE on q and k) + MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool = True,
                 proj_bias: bool = True, ls_init: float | None = 1e-5):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias)
        self.ls1 = LayerScale(dim, ls_init) if ls_init else nn.Identity()
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.ls2 = LayerScale(dim, ls_init) if ls_init else nn.Identity()

    def forward(self, z: Tensor, rope: RotaryEmbedding, mask: Tensor | None = None,
                hidden: int | None = None, sample_hidden: Tensor | None = None) -> Tensor:
        z = z + self.ls1(self.attn(self.norm1(z), rope_q=rope, rope_k=rope, mask=mask))
        return z + self.ls2(self.mlp(self.norm2(z), hidden, sample_hidden))


class CrossAttentionBlock(nn.Module):
    """``sink + Attn(LN(sink), LN(source))``: the read (patches -> latents) and write (latents -> queries)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        self.norm_q = layer_norm(dim)
        self.norm_kv = layer_norm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias)

    def forward(self, sink: Tensor, source: Tensor, rope_q: RotaryEmbedding | None = None,
                rope_k: RotaryEmbedding | None = None, mask: Tensor | None = None) -> Tensor:
        return sink + self.attn(self.norm_q(sink), self.norm_kv(source), rope_q, rope_k, mask)

    def forward_prefixes(self, sink: Tensor, source: Tensor, prefixes: Sequence[int],
                         rope_k: RotaryEmbedding | None = None) -> Tensor:
        """Write from every source prefix ``source[:, :g]`` at once: ``(B, len(prefixes), M, D)``.

        The sink queries are repeated once per prefix and masked to their prefix, so one attention
        call equals ``len(prefixes)`` separate writes (keys are projected once).
        """
        b, m, _ = sink.shape
        g = len(prefixes)
        mask = prefix_mask(prefixes, m, source.shape[1], source.device)
        return self.forward(sink.repeat(1, g, 1), source, rope_k=rope_k, mask=mask).reshape(b, g, m, -1)


def resample_pos_embed(pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Resize a ``(1, h*w, D)`` position table to another grid (bicubic, antialiased)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed.float().reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)


class PatchEmbed(nn.Module):
    """Stride-p conv to patch tokens + learned absolute positions, then optionally LN + MLP.

    Any image whose sides are multiples of the patch size works; the position table is resampled
    from the trained grid. There is no residual around the embedding MLP (as in the reference).
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, mlp_hidden: int | None):
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        self.norm = layer_norm(dim) if mlp_hidden else nn.Identity()
        self.mlp = Mlp(dim, mlp_hidden) if mlp_hidden else nn.Identity()

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"model takes {self.in_chans}-channel images, got {x.shape[1]} channels")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        self.check_input(x)
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = x + resample_pos_embed(self.pos_embed, self.grid, grid)
        return self.mlp(self.norm(x)), grid


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """ViT-style init: truncated-normal linears/convs, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def hidden_units(width: int, ffn_ratio: float) -> int:
    """FFN hidden units kept at Matryoshka width ``width`` (truncation, as the reference does)."""
    return int(width * ffn_ratio)


__all__ = [
    "Attention", "Block", "CrossAttentionBlock", "LayerScale", "Mlp", "PatchEmbed", "RotaryEmbedding",
    "hidden_units", "layer_norm", "resample_pos_embed", "trunc_normal_init", "LN_EPS",
]
