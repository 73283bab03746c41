"""Metrics as streaming accumulators: ``update(pred, target)``, then ``compute()``, and their registry.

An accumulator says which key is primary and whether higher is better; :func:`register_metric`
adds a factory ``factory(model, **kwargs) -> accumulator`` under a name, which
:func:`adaperceiver.evaluation.run_sweep` looks up. The built-in metrics are registered at the
bottom of this module:

* ``"classification"``: :class:`ClassificationAccuracy`, top-1 (and top-5 with more than five classes).

* :class:`SegmentationMetric`: confusion matrix over labelled pixels -> mIoU, pixel accuracy, mean
  class accuracy, in percent. mIoU averages the classes that occur in the ground truth or the
  prediction.
* :class:`DepthMetric`: per-image RMSE (target units), AbsRel, log10, and the fractions delta<1.25^k
  over valid pixels, averaged over images (the usual NYUv2 protocol).

Each class names its ``primary`` key and whether ``higher_is_better``, for sweeps and Pareto plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# --------------------------------------------------------------------------------------------------
# the registry
@runtime_checkable
class MetricAccumulator(Protocol):
    """Accumulates one configuration's predictions over a dataset.

    ``pred`` is exactly what ``model(x, tokens, depth, width)`` returns for the batch and
    ``target`` what the loader yields next to ``x``. ``primary`` names the key of :meth:`compute`
    that the Pareto front is built on; ``higher_is_better`` says which way it improves.
    """

    primary: str
    higher_is_better: bool

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...


MetricFactory = Callable[..., MetricAccumulator]  # factory(model, **kwargs) -> accumulator
_METRICS: dict[str, MetricFactory] = {}


def register_metric(name: str, factory: MetricFactory, overwrite: bool = False) -> None:
    """Make ``run_sweep(..., metric=name)`` build accumulators with ``factory(model, **metric_kwargs)``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    if name in _METRICS and not overwrite and _METRICS[name] is not factory:
        raise ValueError(f"metric {name!r} is already registered (pass overwrite=True to replace it)")
    _METRICS[name] = factory


def list_metrics() -> list[str]:
    return sorted(_METRICS)


def get_metric(name: str) -> MetricFactory:
    """The factory registered under ``name``; unknown names list the known ones."""
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {sorted(_METRICS)}")
    return _METRICS[name]


class ClassificationAccuracy:
    """Top-1 (and top-5 when there are more than five classes) accuracy in percent."""

    primary = "acc1"
    higher_is_better = True

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes
        self.count = 0
        self.correct1 = 0
        self.correct5 = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.dim() != 2 or target.shape[0] != pred.shape[0]:
            raise ValueError(f"classification metric expects logits (B, classes) and labels (B,), "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        target = target.to(pred.device).long()
        k = min(5, pred.shape[1])
        top = pred.topk(k, dim=1).indices
        hit = top == target.view(-1, 1)
        self.correct1 += int(hit[:, 0].sum())
        self.correct5 += int(hit.any(dim=1).sum())
        self.count += pred.shape[0]
        if self.num_classes is None:
            self.num_classes = pred.shape[1]

    def compute(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("no samples were seen")
        out = {"acc1": 100.0 * self.correct1 / self.count}
        if (self.num_classes or 0) > 5:
            out["acc5"] = 100.0 * self.correct5 / self.count
        return out


def _classification_factory(model: nn.Module, **kwargs: Any) -> ClassificationAccuracy:
    cfg = getattr(model, "cfg", None)
    return ClassificationAccuracy(kwargs.get("num_classes", getattr(cfg, "num_classes", None)))


# --------------------------------------------------------------------------------------------------
# dense prediction
class SegmentationMetric:
    """Confusion-matrix accumulator for semantic segmentation.

    ``pred`` is ``(B, K, H, W)`` logits or ``(B, H, W)`` labels; ``target`` ``(B, H, W)`` labels in
    ``[0, K)`` or ``ignore_index``. Predicted logits at another size are resized to the target.
    """

    primary = "miou"
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not isinstance(ignore_index, int) or 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index must lie outside the class range [0, {num_classes - 1}] "
                             f"(e.g. 255 or -100), got {ignore_index!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)  # [gt, pred]

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        k = self.num_classes
        target = target.long().cpu()
        if pred.dim() == 4:
            if pred.shape[1] != k:
                raise ValueError(f"logits have {pred.shape[1]} classes, metric expects {k}")
            if pred.shape[-2:] != target.shape[-2:]:
                pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = pred.argmax(1)
        pred = pred.long().cpu()
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
        keep = target != self.ignore_index
        t, p = target[keep], pred[keep]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
            raise ValueError(f"target labels must be in [0, {k - 1}] or the ignore index {self.ignore_index}; "
                             f"got values in [{int(t.min())}, {int(t.max())}]")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= k):
            raise ValueError(f"predicted labels must be in [0, {k - 1}]")
        self.confusion += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def per_class_iou(self) -> Tensor:
        """IoU per class; NaN for a class absent from both ground truth and prediction."""
        cm = self.confusion.double()
        inter = cm.diag()
        union = cm.sum(0) + cm.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))

    def compute(self) -> dict[str, float]:
        cm = self.confusion.double()
        total = cm.sum()
        iou = self.per_class_iou()
        present = ~iou.isnan()
        gt = cm.sum(1)
        acc = cm.diag()[gt > 0] / gt[gt > 0]
        return {
            "miou": 100.0 * float(iou[present].mean()) if bool(present.any()) else math.nan,
            "pixel_acc": 100.0 * float(cm.diag().sum() / total) if total > 0 else math.nan,
            "mean_acc": 100.0 * float(acc.mean()) if acc.numel() else math.nan,
        }


class DepthMetric:
    """Per-image depth errors on valid pixels (``gt > min_depth``, and ``gt <= max_depth`` if set).

    ``pred`` and ``target`` are ``(B, 1, H, W)`` or ``(B, H, W)``; predictions at another size are
    resized to the target and clamped to ``min_depth`` before logs and ratios. Images without a
    valid pixel are skipped.
    """

    primary = "rmse"
    higher_is_better = False
    keys = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")

    def __init__(self, min_depth: float = 1e-3, max_depth: float | None = None):
        if min_depth < 0 or (max_depth is not None and max_depth <= min_depth):
            raise ValueError(f"need 0 <= min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(self.keys, 0.0)
        self.count = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        if target.dim() == 3:
            target = target.unsqueeze(1)
        if pred.dim() == 3:
            pred = pred.unsqueeze(1)
        if pred.dim() != 4 or pred.shape[1] != 1 or target.shape[1] != 1 or pred.shape[0] != target.shape[0]:
            raise ValueError(f"depth prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be "
                             f"(B, 1, H, W) with the same B")
        pred, target = pred.float().cpu(), target.float().cpu()
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
        valid = target > self.min_depth
        if self.max_depth is not None:
            valid &= target <= self.max_depth
        for p_img, t_img, v in zip(pred, target, valid):
            if not bool(v.any()):
                continue
            p = p_img[v].clamp_min(max(self.min_depth, 1e-6)).double()
            t = t_img[v].double()
            ratio = torch.maximum(p / t, t / p)
            s = self.sums
            s["rmse"] += float((p - t).square().mean().sqrt())
            s["abs_rel"] += float(((p - t).abs() / t).mean())
            s["log10"] += float((p.log10() - t.log10()).abs().mean())
            for i, thr in enumerate((1.25, 1.25 ** 2, 1.25 ** 3), start=1):
                s[f"delta{i}"] += float((ratio < thr).double().mean())
            self.count += 1

    def compute(self) -> dict[str, float]:
        if not self.count:
            return dict.fromkeys(self.keys, math.nan)
        return {k: v / self.count for k, v in self.sums.items()}


def _head_cfg(model):
    return getattr(model, "head_cfg", None)


def segmentation_metric(model=None, **kwargs) -> SegmentationMetric:
    """Sweep factory: class count and ignore index from ``kwargs`` or the model's segmentation head."""
    head = _head_cfg(model)
    num_classes = kwargs.pop("num_classes", getattr(head, "num_classes", None))
    ignore_index = kwargs.pop("ignore_index", getattr(head, "ignore_index", 255))
    if num_classes is None:
        raise ValueError("the segmentation metric needs num_classes (pass metric_kwargs or a SegmentationModel)")
    if kwargs:
        raise ValueError(f"unknown segmentation metric options {sorted(kwargs)}; allowed: num_classes, ignore_index")
    return SegmentationMetric(int(num_classes), int(ignore_index))


def depth_metric(model=None, **kwargs) -> DepthMetric:
    """Sweep factory: evaluated depth range from ``kwargs`` or the model's depth head (``max_depth``)."""
    head = _head_cfg(model)
    min_depth = kwargs.pop("min_depth", 1e-3)
    max_depth = kwargs.pop("max_depth", getattr(head, "max_depth", None))
    if kwargs:
        raise ValueError(f"unknown depth metric options {sorted(kwargs)}; allowed: min_depth, max_depth")
    return DepthMetric(float(min_depth), None if max_depth is None else float(max_depth))


register_metric("classification", _classification_factory)
register_metric("segmentation", segmentation_metric)
register_metric("depth", depth_metric)

__all__ = ["ClassificationAccuracy", "DepthMetric", "MetricAccumulator", "MetricFactory", "SegmentationMetric",
           "depth_metric", "get_metric", "list_metrics", "register_metric", "segmentation_metric"]
