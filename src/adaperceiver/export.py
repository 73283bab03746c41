"""Export a slim (static) model to ONNX.

Cut the configuration out first with :func:`adaperceiver.models.slim.slim` (or ``model.slim(...)``):
the result has physically sliced weights, no run-time slicing, compiles with ``torch.compile`` and
traces to ONNX with :func:`export_onnx`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .models.adaperceiver import AdaPerceiver
from .models.inputs import check_images
from .models.util import num_parameters


class _Logits(nn.Module):
    """Wrap a static model so that tracing sees one tensor in, one tensor out."""

    def __init__(self, model: AdaPerceiver):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.model.cfg
        return self.model(check_images(x, cfg.in_chans, cfg.patch_size))  # the model's own contract


def export_onnx(model: AdaPerceiver, path: str | Path, batch_size: int = 1, dynamic_batch: bool = True,
                opset: int = 18) -> Path:
    """Export a (slim) model to ONNX at its trained image size; the batch axis is dynamic by default.

    Needs the optional ``onnx`` and ``onnxscript`` packages (``pip install onnx onnxscript``).
    """
    cfg = model.cfg
    if cfg.latent_mask == "block" and cfg.num_latents != cfg.token_grans[-1]:
        raise ValueError("export_onnx expects a slim/static model (use slim() first)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = next(model.parameters())
    x = torch.randn(max(batch_size, 2) if dynamic_batch else batch_size, cfg.in_chans, cfg.img_size, cfg.img_size,
                    device=ref.device, dtype=ref.dtype)
    model.eval()
    model.latent_mask(cfg.num_latents, ref.device)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    torch.onnx.export(_Logits(model).eval(), (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_shapes=dynamic, opset_version=opset, dynamo=True, verbose=False,
                      external_data=num_parameters(model) * ref.element_size() > 1.5e9)  # one file below protobuf's 2 GB
    return path


__all__ = ["export_onnx"]
