"""Slim export: cut one configuration out of an adaptive model as a plain static network.

``slim(model, tokens, depth, width)`` builds the static model of that shape
(``model.cfg.static_config(...)``) and copies the weights into it with the unused parts physically
removed: blocks past ``depth`` are dropped and every kept FFN keeps only its first
``int(width * ffn_ratio)`` hidden units (rows of fc1, columns of fc2). The result has fewer
parameters, a smaller safetensors file, no run-time slicing, and the same outputs as
``model(x, tokens=tokens, depth=depth, width=width)``. It is what one ships to a device:
it compiles with ``torch.compile`` and exports to ONNX (:func:`adaperceiver.export.export_onnx`).

The model module imports this one (``AdaPerceiver.slim``), so it does not import the model module.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from .protocol import AdaptiveBackbone

# the only tensors whose shape a slim model may change: the Matryoshka FFNs of the latent blocks
_SLICEABLE = re.compile(r"^blocks\.\d+\.mlp\.fc[12]\.(weight|bias)$")


def _check_slim_args(model: nn.Module, tokens: int, depth: int, width: int) -> None:
    if not isinstance(model, AdaptiveBackbone):
        raise ValueError(f"slim() needs an AdaPerceiver model, got {type(model).__name__}")
    model.resolve_configuration(tokens, depth, width)
    last = model.cfg.token_grans[-1]
    if model.cfg.latent_mask == "block" and model.cfg.beyond_grans == "first_gk" and tokens > last:
        # past the last granularity the adaptive mask lets those latents see only the first `last`
        # latents; a static model cannot reproduce that with its own granularities (under "all"
        # they see every latent, which is what a static model's last group does)
        raise ValueError(f"slim() supports tokens up to the last granularity ({last}) of this model "
                         f"(granularities {list(model.cfg.token_grans)}), got {tokens}")


@torch.no_grad()
def slim(model: nn.Module, tokens: int, depth: int, width: int) -> nn.Module:
    """A static model equal to ``model`` run at ``(tokens, depth, width)``, with sliced weights.

    The returned module is of ``model``'s class whose config is
    ``model.cfg.static_config(tokens, depth, width)``; calling it without arguments runs that
    configuration. It is in eval mode, on the device and dtype of ``model``, and keeps its ``data_config``.
    """
    _check_slim_args(model, tokens, depth, width)
    # the same model class (build_model picks it from cfg.task, which the static config keeps)
    static = type(model)(model.cfg.static_config(tokens, depth, width))
    source = model.state_dict()
    target = static.state_dict()
    sliced: dict[str, Tensor] = {}
    for name, dst in target.items():
        if name not in source:
            raise RuntimeError(f"static model has parameter {name!r} that the adaptive model lacks")
        src = source[name]
        if src.shape != dst.shape:
            if not _SLICEABLE.match(name) or src.dim() != dst.dim() or any(s < d for s, d in zip(src.shape, dst.shape)):
                raise RuntimeError(f"cannot slice {name}: {tuple(src.shape)} -> {tuple(dst.shape)}")
            src = src[tuple(slice(0, n) for n in dst.shape)]  # Matryoshka: keep the first units
        sliced[name] = src.clone()
    static.load_state_dict(sliced, strict=True)
    ref = next(model.parameters())
    static = static.to(device=ref.device, dtype=ref.dtype).eval()
    static.latent_mask(tokens, ref.device)  # fill the mask cache: no tensor->bool checks while tracing
    if getattr(model, "data_config", None) is not None:  # the same images as the adaptive model
        static.data_config = model.data_config
    return static


__all__ = ["slim"]
