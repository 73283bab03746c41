"""Every loss of the library: classification cross-entropy, logits KD and feature matching (distillation),
pixel cross-entropy with an ignore label and the scale-invariant log loss (dense prediction).

The dense losses accept predictions with leading read-out axes ``(..., B, C, H, W)`` (e.g. every (depth,
tokens) read-out of ``forward_anytime``) and then return one loss per read-out, shape ``(...)``;
for a plain ``(B, C, H, W)`` prediction the result is a scalar.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _split_lead(pred: Tensor, target: Tensor, target_dims: int) -> tuple[Tensor, tuple[int, ...]]:
    """Fold leading read-out axes of ``pred`` into the batch; return it and the read-out shape."""
    b = target.shape[0]
    lead = tuple(pred.shape[: pred.dim() - 4])
    if pred.dim() < 4 or pred.shape[len(lead)] != b:
        raise ValueError(f"prediction of shape {tuple(pred.shape)} does not match a target batch of shape "
                         f"{tuple(target.shape)} (expected (..., B, C, H, W) with B={b})")
    if target.dim() != target_dims:
        raise ValueError(f"target must have {target_dims} dims, got shape {tuple(target.shape)}")
    return pred.reshape(-1, *pred.shape[len(lead) + 1:]), lead


def pixel_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean cross-entropy over pixels whose label is not ``ignore_index``.

    ``logits``: ``(..., B, K, H, W)``; ``target``: ``(B, H, W)`` integer labels in ``[0, K)`` or
    ``ignore_index``. Logits at another resolution are bilinearly resized to the target. A batch
    with no labelled pixel gives 0 (with a gradient), not NaN.
    """
    flat, lead = _split_lead(logits, target, 3)
    k = flat.shape[1]
    target = target.long()
    labelled = target != ignore_index
    bad = labelled & ((target < 0) | (target >= k))
    if bool(bad.any()):
        vals = sorted(set(target[bad].unique().tolist()))[:8]
        raise ValueError(f"labels {vals} are outside [0, {k - 1}] and not the ignore index {ignore_index}; "
                         f"check num_classes and ignore_index")
    if flat.shape[-2:] != target.shape[-2:]:
        flat = F.interpolate(flat, size=target.shape[-2:], mode="bilinear", align_corners=False)
    r = flat.shape[0] // target.shape[0]
    tgt = target.repeat(r, 1, 1)
    per_pixel = F.cross_entropy(flat.float(), tgt, ignore_index=ignore_index, reduction="none")  # (R*B, H, W)
    per_pixel = per_pixel.reshape(r, -1)
    count = labelled.sum().clamp_min(1)
    loss = per_pixel.sum(1) / count
    return loss.reshape(lead) if lead else loss[0]


def sig_loss(pred: Tensor, target: Tensor, variance_focus: float = 0.85, max_depth: float | None = None,
             eps: float = 1e-6) -> Tensor:
    """Scale-invariant log loss (Eigen et al.): ``sqrt(mean(g^2) - lambda * mean(g)^2)``, ``g = log pred - log gt``.

    Computed per image over valid pixels (``gt > 0`` and, if given, ``gt <= max_depth``) and
    averaged over the images that have any. ``pred``: ``(..., B, 1, H, W)`` positive depths;
    ``target``: ``(B, 1, H, W)`` or ``(B, H, W)``. Predictions at another resolution are resized.
    """
    if not 0.0 <= variance_focus <= 1.0:
        raise ValueError(f"variance_focus must be in [0, 1], got {variance_focus}")
    if target.dim() == 3:
        target = target.unsqueeze(1)
    flat, lead = _split_lead(pred, target, 4)
    if flat.shape[1] != 1 or target.shape[1] != 1:
        raise ValueError(f"depth prediction and target need one channel, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if flat.shape[-2:] != target.shape[-2:]:
        flat = F.interpolate(flat, size=target.shape[-2:], mode="bilinear", align_corners=False)
    target = target.float()
    valid = target > 0
    if max_depth is not None:
        valid = valid & (target <= max_depth)
    r, b = flat.shape[0] // target.shape[0], target.shape[0]
    flat = flat.float().reshape(r, b, -1)
    gt = target.reshape(1, b, -1)
    v = valid.reshape(1, b, -1).float()
    g = (flat.clamp_min(eps).log() - gt.clamp_min(eps).log()) * v
    n = v.sum(-1)  # (1, B)
    has = n > 0
    mean = g.sum(-1) / n.clamp_min(1)
    mean_sq = g.square().sum(-1) / n.clamp_min(1)
    per_image = (mean_sq - variance_focus * mean.square()).clamp_min(eps).sqrt()  # (R, B)
    loss = (per_image * has).sum(-1) / has.sum().clamp_min(1)
    if not bool(has.any()):
        loss = flat.sum((-1, -2)) * 0.0  # no valid pixel: zero loss that still has a graph
    return loss.reshape(lead) if lead else loss[0]


class PixelCrossEntropy(nn.Module):
    """Module form of :func:`pixel_cross_entropy` (a ``task_loss(pred, target)``)."""

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return pixel_cross_entropy(logits, target, self.ignore_index)

    def per_readout(self, outputs: Tensor, target: Tensor) -> Tensor:
        """One loss per read-out of an ``(L, G, B, K, H, W)`` grid, in one vectorised call."""
        return pixel_cross_entropy(outputs, target, self.ignore_index)


class SigLoss(nn.Module):
    """Module form of :func:`sig_loss` (a ``task_loss(pred, target)``)."""

    def __init__(self, variance_focus: float = 0.85, max_depth: float | None = None):
        super().__init__()
        if not 0.0 <= variance_focus <= 1.0:
            raise ValueError(f"variance_focus must be in [0, 1], got {variance_focus}")
        self.variance_focus = variance_focus
        self.max_depth = max_depth

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return sig_loss(pred, target, self.variance_focus, self.max_depth)

    def per_readout(self, outputs: Tensor, target: Tensor) -> Tensor:
        """One loss per read-out of an ``(L, G, B, 1, H, W)`` grid, in one vectorised call."""
        return sig_loss(outputs, target, self.variance_focus, self.max_depth)


# --------------------------------------------------------------------------------------------------
# classification
class CrossEntropy:
    """The classification task loss: mean cross-entropy with optional label smoothing.

    Targets are class ids ``(B,)`` or soft rows ``(B, classes)`` summing to 1 (MixUp / CutMix);
    label smoothing mixes either with the uniform distribution, the same for both.

    Besides ``loss(pred, target)`` it offers ``per_readout(outputs, target)``, one vectorised call
    for a whole ``(L, G, B, classes)`` read-out grid; any task loss may define it for speed.
    """

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(pred.float(), target, label_smoothing=self.label_smoothing)

    def per_readout(self, outputs: Tensor, target: Tensor) -> Tensor:
        lead = outputs.shape[:-2]
        flat = outputs.float().reshape(-1, outputs.shape[-1])
        reps = flat.shape[0] // target.shape[0]
        tiled = target.repeat(reps, *(1,) * (target.dim() - 1))
        losses = F.cross_entropy(flat, tiled, label_smoothing=self.label_smoothing, reduction="none")
        return losses.view(*lead, target.shape[0]).mean(-1)


def cross_entropy(label_smoothing: float = 0.0) -> CrossEntropy:
    return CrossEntropy(label_smoothing)


# --------------------------------------------------------------------------------------------------
# distillation
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL divergence of the student from the teacher at temperature T, scaled by T^2 (batch mean).

    ``student_logits`` may carry leading read-out axes ``(..., B, C)``; the result is one value per
    read-out (shape ``(...)``).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=-1)
    log_q = F.log_softmax(teacher_logits.float() / t, dim=-1).expand_as(log_p)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (..., B)
    return kl.mean(-1) * t * t


def feature_loss(student: Tensor, teacher: Tensor, cosine_weight: float = 0.9, smooth_l1_weight: float = 0.1) -> Tensor:
    """``cosine_weight * (1 - cos) + smooth_l1_weight * smooth_l1`` per read-out.

    ``student`` is ``(..., B, P, C)``, ``teacher`` ``(B, P, C)``; the result has shape ``(...)``.
    """
    teacher = teacher.float().expand_as(student)
    student = student.float()
    cos = 1.0 - F.cosine_similarity(student, teacher, dim=-1)  # (..., B, P)
    l1 = F.smooth_l1_loss(student, teacher, reduction="none").mean(-1)
    return (cosine_weight * cos + smooth_l1_weight * l1).mean((-1, -2))


__all__ = ["CrossEntropy", "PixelCrossEntropy", "SigLoss", "cross_entropy", "feature_loss", "kd_loss",
           "pixel_cross_entropy", "sig_loss"]
