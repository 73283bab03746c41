"""The input contract of every model entry point: what a tensor handed to a model must be.

One function, :func:`check_images`, is called by the model itself (``model(x)``,
``forward_anytime``), by ``for_inference()`` models, by slim static modules (they are models) and
by the ONNX export wrapper, so that they accept and refuse the same inputs with the same message:

- a ``torch.Tensor`` of shape ``(B, C, H, W)``;
- a floating dtype (another float dtype is cast to the model's); integer, bool and complex tensors
  are refused: uint8 pixels need scaling and normalising like the training data, which a cast
  cannot do (``adaperceiver.models.DataConfig`` records how; the ``predict`` API applies it);
- ``C`` equal to the model's ``in_chans``, ``H`` and ``W`` multiples of its patch size;
- in eval mode, finite values of magnitude at most :data:`MAX_ABS`: normalised images lie within a
  few units of 0, so NaN/inf or values like 0-255 pixels are refused instead of silently giving
  a wrong answer. (Training batches come from the data pipeline and skip this one reduction; so
  does tracing for ``torch.compile`` / ONNX, where values are not known.)
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_ABS = 64.0  # a normalised image stays far below; 0-255 pixel values mostly do not


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def check_images(x: Tensor, in_chans: int, patch_size: int, dtype: torch.dtype | None = None,
                 check_values: bool = True) -> Tensor:
    """``x`` checked against the input contract (module docstring) and cast to ``dtype``; a
    ``ValueError`` naming what is wrong and what is allowed otherwise."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor of images (B, C, H, W), got {type(x).__module__}."
                         f"{type(x).__qualname__}; convert it with torch.as_tensor(x)")
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x has dtype {x.dtype}; the model takes float images normalised like its training data "
                         f"(uint8 pixels: x.float() / 255, then the data config's mean and std)")
    if x.shape[1] != in_chans:
        raise ValueError(f"model takes {in_chans}-channel images, got {x.shape[1]} channels")
    h, w = x.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch_size}")
    if check_values and x.numel() and not _tracing():
        peak = float(x.detach().abs().amax())
        if not peak <= MAX_ABS:  # also NaN
            raise ValueError(f"x holds values of magnitude {peak:g}; the model takes finite images normalised like "
                             f"its training data (|x| <= {MAX_ABS:g}; 0-255 pixels: divide by 255, then the data "
                             f"config's mean and std)")
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


__all__ = ["MAX_ABS", "check_images"]
