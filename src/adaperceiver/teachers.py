"""Teachers for distillation: anything that maps images to logits and per-patch features.

A teacher is wrapped in a :class:`Teacher`, which always runs it in eval mode under ``no_grad``
and returns a :class:`TeacherOutput`. Adapters cover this library's checkpoints (a static ViT
trained here, or an AdaPerceiver at its full configuration), a timm model when timm is installed
(never downloading: weights come from a file you give), and any user module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .layers import Block, PatchEmbed, hidden_units, layer_norm, trunc_normal_init
from .model import AnytimeOutput


class TeacherOutput(NamedTuple):
    logits: Tensor | None  # (B, classes)
    features: Tensor | None  # (B, P_t, C_t) per-patch features, row-major over the teacher's grid


# --------------------------------------------------------------------------------------------------
# a static ViT, the simplest strong teacher to train here
@dataclass
class ViTConfig:
    img_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    embed_dim: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 3.0
    num_classes: int = 10

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
    """Plain ViT over patch tokens (no latents, no adaptivity), mean-pooled to logits.

    ``forward_features`` returns the final patch tokens, which serve as the teacher's features.
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
        trunc_normal_init(self)
        nn.init.trunc_normal_(self.patch_embed.pos_embed, std=0.02, a=-0.04, b=0.04)

    def forward_features(self, x: Tensor) -> Tensor:
        z, _ = self.patch_embed(x)
        for blk in self.blocks:
            z = blk(z, rope=None)
        return self.norm(z)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.head(feats.mean(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def forward_anytime(self, x: Tensor, tokens=None, width=None, depths=None, token_counts=None) -> AnytimeOutput:
        """The one read-out this static model has, in the adaptive models' layout."""
        if width is not None or (depths is not None and tuple(depths) != (self.num_blocks,)):
            raise ValueError("StaticViT has a single configuration: train it with ObjectiveConfig.static()")
        return AnytimeOutput(self(x)[None, None], (self.num_blocks,), (self.cfg.num_latents,))

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"architecture": "static_vit"}


def build_architecture(name: str, cfg: None, meta: dict[str, Any]) -> StaticViT:
    """Rebuild a saved static ViT (``checkpoint.from_pretrained`` calls this)."""
    if name != "static_vit":
        raise ValueError(f"adaperceiver.teachers builds 'static_vit', not {name!r}")
    return StaticViT(ViTConfig(**meta["model"]))


# --------------------------------------------------------------------------------------------------
# adapters
class Teacher(nn.Module):
    """Frozen wrapper: ``teacher(x) -> TeacherOutput`` in eval mode, without gradients.

    ``fn(module, x)`` extracts ``(logits, features)``; either may be None.
    """

    def __init__(self, module: nn.Module, fn: Callable[[nn.Module, Tensor], tuple[Tensor | None, Tensor | None]],
                 name: str = "teacher"):
        super().__init__()
        self.module = module.eval().requires_grad_(False)
        self.fn = fn
        self.name = name

    def train(self, mode: bool = True) -> "Teacher":  # the teacher never leaves eval mode
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> TeacherOutput:
        logits, feats = self.fn(self.module, x)
        if feats is not None and feats.dim() == 4:  # (B, C, h, w) feature maps -> (B, h*w, C)
            feats = feats.flatten(2).transpose(1, 2)
        return TeacherOutput(logits, feats)


def _vit_outputs(m: StaticViT, x: Tensor):
    feats = m.forward_features(x)
    return m.forward_head(feats), feats


def _adaperceiver_outputs(m, x: Tensor):
    """Full-configuration logits; features = the embedded patch tokens (a classifier has no deeper
    per-patch output, so prefer a static ViT teacher when feature matching matters)."""
    feats = m.forward_features(x)
    logits = m.forward_head(feats)
    return logits, feats.patches


def from_static_vit(model: StaticViT) -> Teacher:
    return Teacher(model, _vit_outputs, name="static-vit")


def from_adaperceiver(model: nn.Module) -> Teacher:
    return Teacher(model, _adaperceiver_outputs, name="adaperceiver")


def from_module(module: nn.Module) -> Teacher:
    """A user module whose forward returns ``(logits, features)``, a dict with those keys, or logits only."""

    def fn(m: nn.Module, x: Tensor):
        out = m(x)
        if isinstance(out, dict):
            return out.get("logits"), out.get("features")
        if isinstance(out, (tuple, list)):
            if len(out) != 2:
                raise ValueError(f"teacher module returned {len(out)} values; expected (logits, features)")
            return out[0], out[1]
        return out, None

    return Teacher(module, fn, name=type(module).__name__)


def from_timm(model_name: str, checkpoint: str | Path | None = None, **kwargs: Any) -> Teacher:
    """A timm model built *without* downloading; weights (if any) come from ``checkpoint``.

    timm is an optional dependency; features are the final patch tokens without prefix tokens.
    """
    try:
        import timm
    except ImportError:
        raise ImportError("the timm teacher needs timm: pip install timm (it is optional; nothing else needs it)") from None
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    if checkpoint is not None:
        from .checkpoint import read_state_dict

        model.load_state_dict(read_state_dict(checkpoint))
    prefix = int(getattr(model, "num_prefix_tokens", 0))

    def fn(m: nn.Module, x: Tensor):
        feats = m.forward_features(x)
        logits = m.forward_head(feats)
        if feats.dim() == 3:
            feats = feats[:, prefix:]
        return logits, feats

    return Teacher(model, fn, name=f"timm:{model_name}")


# --------------------------------------------------------------------------------------------------
# saving / loading static ViT teachers
def save_vit(model: StaticViT, directory: str | Path) -> Path:
    """Write a static ViT in the usual layout (model.safetensors + config.json)."""
    from .checkpoint import save_pretrained

    return save_pretrained(model, directory)


def load_teacher(spec: str) -> Teacher:
    """Build a teacher from a command-line spec.

    - ``DIR``: a run directory of this library (a static ViT or an AdaPerceiver);
    - ``timm:NAME[:CHECKPOINT]``: a timm model, weights from a local file;
    - ``python:MODULE:ATTR``: a callable returning an ``nn.Module`` (see :func:`from_module`).
    """
    import importlib

    if spec.startswith("timm:"):
        _, name, *ckpt = spec.split(":", 2)
        return from_timm(name, ckpt[0] if ckpt else None)
    if spec.startswith("python:"):
        _, mod, attr = spec.split(":", 2)
        return from_module(getattr(importlib.import_module(mod), attr)())
    directory = Path(spec)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"teacher {spec!r}: expected a run directory with config.json, 'timm:NAME[:CKPT]' or 'python:MODULE:ATTR'")
    from .checkpoint import from_pretrained

    model = from_pretrained(directory)
    return from_static_vit(model) if isinstance(model, StaticViT) else from_adaperceiver(model)


# --------------------------------------------------------------------------------------------------
# caching teacher outputs across epochs
class CachedTeacher(nn.Module):
    """Stores a teacher's outputs per dataset index in memory-mapped ``.npy`` files.

    Only valid when the teacher sees the same input for an index every epoch (no random
    augmentation on the teacher's input). Call with the batch's dataset indices.
    """

    def __init__(self, teacher: Teacher, cache_dir: str | Path, num_items: int):
        super().__init__()
        self.teacher = teacher
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.num_items = num_items
        self._arrays: dict[str, np.ndarray] = {}
        done_path = self.dir / "done.npy"
        self.done = (np.load(done_path, mmap_mode="r+") if done_path.exists()
                     else np.lib.format.open_memmap(done_path, mode="w+", dtype=np.bool_, shape=(num_items,)))
        if self.done.shape != (num_items,):
            raise ValueError(f"teacher cache {self.dir} was built for {self.done.shape[0]} items, not {num_items}")

    def _array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self._arrays:
            path = self.dir / f"{name}.npy"
            if path.exists():
                arr = np.load(path, mmap_mode="r+")
                if arr.shape[1:] != shape:
                    raise ValueError(f"teacher cache {path} holds shape {arr.shape[1:]}, teacher gives {shape}")
            else:
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.num_items, *shape))
            self._arrays[name] = arr
        return self._arrays[name]

    @torch.no_grad()
    def forward(self, x: Tensor, indices: Tensor) -> TeacherOutput:
        idx = indices.cpu().numpy()
        if idx.min() < 0 or idx.max() >= self.num_items:
            raise ValueError(f"dataset index out of range [0, {self.num_items})")
        missing = ~self.done[idx]
        if missing.any():
            out = self.teacher(x[torch.from_numpy(missing).to(x.device)])
            for name, t in (("logits", out.logits), ("features", out.features)):
                if t is not None:
                    self._array(name, tuple(t.shape[1:]))[idx[missing]] = t.float().cpu().numpy()
            self.done[idx[missing]] = True
        result = []
        for name in ("logits", "features"):
            path = self.dir / f"{name}.npy"
            if name in self._arrays or path.exists():
                arr = self._arrays[name] if name in self._arrays else np.load(path, mmap_mode="r")
                result.append(torch.from_numpy(np.ascontiguousarray(arr[idx])).to(x.device))
            else:
                result.append(None)
        return TeacherOutput(*result)

    def flush(self) -> None:
        for arr in (*self._arrays.values(), self.done):
            arr.flush()
