"""Classify images with a trained model: top-k class names and probabilities, at any configuration.

``Predictor(model)(images, k=5, tokens=..., depth=..., width=...)`` takes image files, PIL images,
uint8 tensors (0-255) or float tensors (pixels in [0, 1]), alone or in a list, prepares each the way the
model's :class:`~adaperceiver.models.data_config.DataConfig` says (:mod:`adaperceiver.data.transforms`)
and returns one :class:`Prediction` per image. Conversions are documented there: grey files become RGB
for a 3-channel model (and colour becomes grey for a 1-channel one), any size is resized and cropped to
the model's; a float tensor outside [0, 1] or with 2 / 4+ channels is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.transforms import EvalTransform, prepare_tensor
from ..errors import UserError
from ..models.data_config import DataConfig


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, most probable first."""

    source: str  # the file, or "image N" for an in-memory image
    labels: tuple[str, ...]
    indices: tuple[int, ...]
    probs: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "labels": list(self.labels), "indices": list(self.indices),
                "probs": [round(p, 6) for p in self.probs]}


class Predictor:
    """Top-k classification of images by ``model``, prepared with ``data_config`` (default: the model's)."""

    def __init__(self, model: nn.Module, data_config: DataConfig | None = None, batch_size: int = 32):
        data_config = data_config or getattr(model, "data_config", None)
        if data_config is None:
            raise UserError("the model carries no data_config (how its images are prepared); load it with "
                            "from_pretrained, or pass data_config=DataConfig(...)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        task = getattr(getattr(model, "cfg", None), "task", "classification")
        if task != "classification":
            raise UserError(f"Predictor classifies images; this is a {task} model")
        self.model = model.eval()
        self.data_config = data_config
        self.transform = EvalTransform(data_config)
        self.batch_size = batch_size

    def prepare(self, images: Any) -> tuple[Tensor, list[str]]:
        """``(B, C, H, W)`` model input and a name per image, from one image or a list of them."""
        if isinstance(images, (str, Path, Tensor)) or hasattr(images, "getbands"):  # one path / tensor / PIL image
            images = [images]
        if not isinstance(images, Iterable):
            raise UserError(f"expected image files, PIL images or tensors, got {type(images).__name__}")
        batch, names = [], []
        for item in images:
            if isinstance(item, (str, Path)):
                batch.append(self.transform(Path(item)).unsqueeze(0))
                names.append(str(item))
            elif isinstance(item, Tensor):
                x = prepare_tensor(item, self.data_config)
                batch.append(x)
                names += [f"image {len(names) + i}" for i in range(x.shape[0])]
            elif hasattr(item, "getbands"):
                batch.append(self.transform(item).unsqueeze(0))
                names.append(f"image {len(names)}")
            else:
                raise UserError(f"cannot classify a {type(item).__name__}: give image files, PIL images, or uint8 / "
                                f"float image tensors")
        if not batch:
            raise UserError("no images to classify")
        return torch.cat(batch), names

    @torch.no_grad()
    def logits(self, images: Any, tokens: int | None = None, depth: int | None = None,
               width: int | None = None) -> Tensor:
        """Raw class scores ``(B, num_classes)`` at the given configuration (default: the full one)."""
        x, _ = self.prepare(images)
        return self._run(x, tokens, depth, width)

    def _run(self, x: Tensor, tokens: int | None, depth: int | None, width: int | None,
             exit_confidence: float | None = None) -> Tensor:
        kw = {k: v for k, v in (("tokens", tokens), ("depth", depth), ("width", width)) if v is not None}
        if exit_confidence is not None:  # each image stops at the first block confident enough
            if depth is not None:
                raise ValueError("early exit chooses the depth per image: give exit_confidence or depth, not both")
            if not 0.0 <= exit_confidence <= 1.0:
                raise ValueError(f"exit_confidence must be a probability in [0, 1], got {exit_confidence}")
            if not hasattr(self.model, "forward_early_exit"):
                raise UserError(f"{type(self.model).__name__} has no early exit (an AdaPerceiver classifier has)")

            def run(xb: Tensor) -> Tensor:
                return self.model.forward_early_exit(xb, exit_confidence, **kw).logits
        else:
            def run(xb: Tensor) -> Tensor:
                return self.model(xb, **kw)
        param = next(self.model.parameters())
        out = [run(x[i:i + self.batch_size].to(param.device, param.dtype)).float().cpu()
               for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, images: Any, k: int = 5, tokens: int | None = None, depth: int | None = None,
                 width: int | None = None, exit_confidence: float | None = None) -> list[Prediction]:
        """The ``k`` most probable classes of every image (``k`` is capped at the number of classes).
        ``exit_confidence``: confidence early exit, each image stops after the first block whose top
        probability reaches it (the per-input saving that measured best, docs/paper_claims.md)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x, names = self.prepare(images)
        probs = self._run(x, tokens, depth, width, exit_confidence).softmax(-1)
        top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1)
        labels = self.data_config.class_names or ()
        return [Prediction(name, tuple(labels[j] if j < len(labels) else f"class {j}" for j in idx.tolist()),
                           tuple(idx.tolist()), tuple(p.tolist())) for name, idx, p in zip(names, top_i, top_p)]


def predict(model: nn.Module, images: Any, k: int = 5, tokens: int | None = None, depth: int | None = None,
            width: int | None = None) -> list[Prediction]:
    """``Predictor(model)(images, k, tokens, depth, width)``: top-k classes of each image."""
    return Predictor(model)(images, k, tokens, depth, width)


def format_predictions(preds: Sequence[Prediction]) -> str:
    """A plain-text table, columns aligned: one row per image, its top classes with probabilities."""
    if not preds:
        return "(no images)"
    k = max(len(p.labels) for p in preds)
    rows = [["image", *(f"top-{i + 1}" for i in range(k))]]
    for p in preds:
        src = p.source if len(p.source) <= 60 else "..." + p.source[-57:]
        rows.append([src, *(f"{lbl} ({prob:.3f})" for lbl, prob in zip(p.labels, p.probs))])
    widths = [max(len(r[c]) for r in rows if c < len(r)) for c in range(k + 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


__all__ = ["Prediction", "Predictor", "format_predictions", "predict"]
