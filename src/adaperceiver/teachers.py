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
    """A teacher whose outputs are stored on disk, keyed by the content of each input image.

    Repeated epochs over the same (un-augmented) images read the teacher's logits and features
    from memory-mapped ``.npy`` files instead of running it; an augmented image is simply a new
    key (computed, and cached while there is room). ``capacity`` bounds the rows on disk.
    Files: ``logits.npy``, ``features.npy`` (float32 rows) and ``keys.txt`` (one hash per row).
    """

    def __init__(self, teacher: Teacher, cache_dir: str | Path, capacity: int):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.teacher = teacher
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.keys_path = self.dir / "keys.txt"
        keys = self.keys_path.read_text().split() if self.keys_path.exists() else []
        self.rows: dict[str, int] = {k: i for i, k in enumerate(keys)}
        self._arrays: dict[str, np.ndarray] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(image: Tensor) -> str:
        import hashlib

        data = image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return hashlib.blake2b(data + str(tuple(image.shape)).encode(), digest_size=16).hexdigest()

    def _array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self._arrays:
            path = self.dir / f"{name}.npy"
            if path.exists():
                arr = np.load(path, mmap_mode="r+")
                if arr.shape != (self.capacity, *shape):
                    raise ValueError(f"teacher cache {path} holds {arr.shape}, expected {(self.capacity, *shape)}: "
                                     f"use another cache directory for this teacher / capacity")
            else:
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.capacity, *shape))
            self._arrays[name] = arr
        return self._arrays[name]

    def _stored(self, name: str) -> np.ndarray | None:
        if name in self._arrays:
            return self._arrays[name]
        path = self.dir / f"{name}.npy"
        return self._array(name, np.load(path, mmap_mode="r").shape[1:]) if path.exists() else None

    @torch.no_grad()
    def forward(self, x: Tensor) -> TeacherOutput:
        keys = [self.key(img) for img in x]
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        cached = [i for i, k in enumerate(keys) if k in self.rows]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = None
        if missing:
            fresh = self.teacher(x[torch.tensor(missing, device=x.device)])
            room = self.capacity - len(self.rows)
            store = missing[:max(0, room)]
            if store:
                rows = list(range(len(self.rows), len(self.rows) + len(store)))
                for name, t in (("logits", fresh.logits), ("features", fresh.features)):
                    if t is not None:
                        arr = self._array(name, tuple(t.shape[1:]))
                        arr[rows] = t[: len(store)].float().cpu().numpy()
                        arr.flush()
                with self.keys_path.open("a") as f:  # rows first, then their keys: a crash loses rows, never mixes them
                    f.write("".join(keys[i] + "\n" for i in store))
                for i, r in zip(store, rows):
                    self.rows[keys[i]] = r
        result = []
        for name in ("logits", "features"):
            new = None if fresh is None else getattr(fresh, name)
            arr = self._stored(name)
            if arr is None and new is None:
                result.append(None)
                continue
            shape = tuple(new.shape[1:]) if new is not None else arr.shape[1:]
            out = torch.empty((len(keys), *shape), dtype=torch.float32)
            if cached:
                out[cached] = torch.from_numpy(np.ascontiguousarray(arr[[self.rows[keys[i]] for i in cached]]))
            if missing:
                out[missing] = new.float().cpu()
            result.append(out.to(x.device))
        return TeacherOutput(*result)


# --------------------------------------------------------------------------------------------------
# command line: adaperceiver teacher (train a static ViT teacher with the shared engine)
def register_cli(sub) -> None:
    from .training import _add_train_options

    p = sub.add_parser(
        "teacher", help="train a static ViT teacher for distillation",
        description="Train a plain (non-adaptive) ViT classifier with the same engine, data and options as "
                    "'adaperceiver train'. Its run directory is a --teacher for 'adaperceiver distill' (logits "
                    "and final patch tokens as features).")
    g = p.add_argument_group("teacher model")
    g.add_argument("--embed-dim", type=int, default=128, help="width (default 128)")
    g.add_argument("--depth", type=int, default=6, help="blocks (default 6)")
    g.add_argument("--num-heads", type=int, default=4, help="attention heads (default 4)")
    g.add_argument("--mlp-ratio", type=float, default=3.0, help="MLP hidden / width (default 3.0)")
    g.add_argument("--patch-size", type=int, default=4, help="patch size (default 4)")
    g = _add_train_options(p, epochs_default=5)
    g.add_argument("--name", default="teacher", help="run name: the run directory is OUT/NAME (default teacher)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total")
    p.set_defaults(func=_cli_teacher)


def _cli_teacher(args) -> int:
    import dataclasses

    from .objective import ObjectiveConfig
    from .tasks import get_task
    from .training import Trainer, _config_from_args

    cfg = _config_from_args(args, task="classification", model="static_vit", name=args.name, max_steps=args.max_steps)
    cfg = dataclasses.replace(cfg, objective=ObjectiveConfig.static(label_smoothing=args.label_smoothing))
    data = get_task(cfg.task).build_data(cfg)
    torch.manual_seed(cfg.seed)
    vit = StaticViT(ViTConfig(img_size=data.img_size, patch_size=args.patch_size, in_chans=data.in_chans,
                              embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads,
                              mlp_ratio=args.mlp_ratio, num_classes=data.num_classes))
    result = Trainer(cfg, data=data, model=vit).fit()
    n = sum(p.numel() for p in vit.parameters())
    print(f"teacher ({n / 1e6:.2f} M parameters) trained to step {result.step} in {result.train_seconds:.0f} s; " +
          ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print(f"run directory: {result.run_dir} (use as: adaperceiver distill --teacher {result.run_dir})")
    return 0
