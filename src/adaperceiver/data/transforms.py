"""Evaluation preprocessing: one image (a file, a PIL image or a tensor) -> the model's input tensor.

Every eval / prediction path follows the model's :class:`~adaperceiver.models.data_config.DataConfig`:

1. read the file with PIL; a JPEG larger than needed is decoded at reduced size (``draft``: the
   decoder's DCT scaling to the smallest scale that still covers the resize target, several times
   faster than decoding full size and resizing);
2. convert to the model's channels (grey ``L`` or ``RGB``; 16-bit grey is scaled to 8 bit);
3. resize the shorter side to ``resize_size`` and centre-crop ``input_size`` (``crop_mode="center"``)
   or resize the whole image to ``input_size`` x ``input_size`` (``"squash"``);
4. scale to [0, 1] and normalise with the config's mean / std.

The per-image PIL path was chosen over kornia (batched torch ops) after measuring both on real JPEGs
(docs/data.md: PIL with ``draft`` is the faster of the two on CPU, and kornia needs decoded full-size
tensors of one shape before it can batch anything). Tensors given directly (already decoded, e.g.
by a user) are resized with ``torch.nn.functional.interpolate`` (antialiased) instead:
:func:`prepare_tensor`.

Training augmentation lives in :mod:`adaperceiver.data.augment`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..models.data_config import DataConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _pil():
    from PIL import Image

    return Image


def _resample(name: str):
    r = _pil().Resampling
    return {"nearest": r.NEAREST, "bilinear": r.BILINEAR, "bicubic": r.BICUBIC}[name]


def open_image(path: str | Path, draft_size: int | None = None):
    """Decode the image file at ``path`` into a loaded PIL image (a JPEG at reduced size when both its
    sides stay >= ``draft_size``). Raises :class:`UserError` naming the file when it is not a readable
    image."""
    Image = _pil()
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no image file at {path}")
    try:  # DecompressionBombError: an image claiming more pixels than PIL's safety limit
        with Image.open(path) as im:
            if draft_size is not None and im.format == "JPEG":
                im.draft(im.mode if im.mode in ("L", "RGB") else None, (draft_size, draft_size))
            im.load()
            return im
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def convert_mode(image, in_chans: int):
    """``image`` as grey (``L``, ``in_chans=1``) or ``RGB`` (3): colour to grey by luminance, grey to
    RGB by repeating the channel, alpha dropped, 16/32-bit grey scaled to 8 bit by its type's range."""
    Image = _pil()
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    want = "L" if in_chans == 1 else "RGB"
    if image.mode == want:
        return image
    if image.mode in ("P", "LA", "PA") and want == "L":
        image = image.convert("RGBA")
    return image.convert(want)


def resize_crop(image, cfg: DataConfig):
    """Resize (shorter side to ``cfg.resize_size``) and centre-crop ``cfg.input_size``, or squash."""
    size, resample = cfg.input_size, _resample(cfg.interpolation)
    w, h = image.size
    if cfg.crop_mode == "squash":
        return image if (w, h) == (size, size) else image.resize((size, size), resample)
    short = cfg.resize_size
    if min(w, h) != short:
        scale = short / min(w, h)
        w, h = (short, max(short, round(h * scale))) if w <= h else (max(short, round(w * scale)), short)
        image = image.resize((w, h), resample)
    if (w, h) == (size, size):
        return image
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize(x: Tensor, cfg: DataConfig) -> Tensor:
    """``(x - mean) / std`` per channel, for ``(C, H, W)`` or ``(B, C, H, W)`` pixels in [0, 1]."""
    mean = torch.tensor(cfg.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def pil_to_tensor(image) -> Tensor:
    """A grey or RGB PIL image -> float ``(C, H, W)`` in [0, 1]."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
    return x.float().div_(255.0)


class EvalTransform:
    """``image or path -> (C, H, W)`` float tensor prepared as ``cfg`` says (see the module docstring)."""

    def __init__(self, cfg: DataConfig, draft: bool = True):
        self.cfg = cfg
        self.draft = draft

    def load(self, path: str | Path):
        """The decoded file, reduced in the JPEG decoder when that stays above the resize target."""
        need = self.cfg.input_size if self.cfg.crop_mode == "squash" else self.cfg.resize_size
        return open_image(path, need if self.draft else None)

    def __call__(self, image) -> Tensor:
        if isinstance(image, (str, Path)):
            image = self.load(image)
        image = resize_crop(convert_mode(image, self.cfg.in_chans), self.cfg)
        return normalize(pil_to_tensor(image), self.cfg)

    def __repr__(self) -> str:
        c = self.cfg
        crop = (f"resize {c.resize_size} -> centre crop {c.input_size}" if c.crop_mode == "center"
                else f"squash to {c.input_size}")
        return (f"EvalTransform({'grey' if c.in_chans == 1 else 'RGB'}, {crop}, {c.interpolation}, "
                f"mean {list(c.mean)}, std {list(c.std)})")


def eval_transform(cfg: DataConfig, draft: bool = True) -> EvalTransform:
    return EvalTransform(cfg, draft)


def prepare_tensor(x: Tensor, cfg: DataConfig) -> Tensor:
    """Pixels given as a tensor -> the model's input ``(B, C, H, W)``.

    ``x`` is ``(C, H, W)`` or ``(B, C, H, W)``: uint8 in [0, 255] or float in [0, 1] (as PIL / torchvision
    decode them; a float tensor outside [0, 1] is refused, since it is most likely normalised already).
    One channel is repeated for a 3-channel model; three are averaged by luminance for a 1-channel one.
    Resize and crop follow ``cfg`` (bilinear / bicubic antialiased on torch tensors).
    """
    if not isinstance(x, Tensor):
        raise UserError(f"expected a tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"an image tensor must be (C, H, W) or (B, C, H, W) with C = 1 or 3, got shape "
                        f"{tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    elif x.is_floating_point():
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise UserError(f"a float image tensor must hold pixels in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                            f"if it is already normalised for the model, call the model on it directly")
        x = x.float()
    else:
        raise UserError(f"an image tensor must be uint8 (0-255) or float (0-1), got {x.dtype}")
    if x.shape[1] != cfg.in_chans:
        if cfg.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        else:  # ITU-R 601-2 luma, the weights PIL's convert("L") uses
            x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    size, mode = cfg.input_size, cfg.interpolation
    kw = {} if mode == "nearest" else {"antialias": True, "align_corners": False}
    h, w = x.shape[-2:]
    if cfg.crop_mode == "squash":
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode=mode, **kw)
    else:
        short = cfg.resize_size
        if min(h, w) != short:
            scale = short / min(h, w)
            h, w = (max(short, round(h * scale)), short) if w <= h else (short, max(short, round(w * scale)))
            x = F.interpolate(x, size=(h, w), mode=mode, **kw)
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        x = x[..., top:top + size, left:left + size]
    return normalize(x.clamp(0.0, 1.0), cfg)


__all__ = ["IMAGE_EXTENSIONS", "EvalTransform", "convert_mode", "eval_transform", "normalize", "open_image",
           "pil_to_tensor", "prepare_tensor", "resize_crop"]
