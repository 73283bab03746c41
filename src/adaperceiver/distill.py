"""Distillation losses: logits KL at a temperature and per-patch feature matching.

The student gets a separate feature write-out (:class:`FeatureHead`): one query per patch attends
to the latents, as in the dense model, and a projection maps to the teacher's channel count.
Both losses are applied to every (depth, token-count) read-out of the one backbone pass, weighted
like the supervised objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import CrossAttentionBlock
from .masks import prefix_mask
from .model import AdaPerceiver, AnytimeOutput


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


def resample_tokens(features: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
    """Bilinearly resample ``(B, h*w, C)`` patch features from one grid to another."""
    if tuple(src_grid) == tuple(dst_grid):
        return features
    b, p, c = features.shape
    if p != src_grid[0] * src_grid[1]:
        raise ValueError(f"{p} teacher patches do not form a {src_grid[0]}x{src_grid[1]} grid")
    fmap = features.transpose(1, 2).reshape(b, c, *src_grid)
    fmap = F.interpolate(fmap.float(), size=dst_grid, mode="bilinear", align_corners=False)
    return fmap.flatten(2).transpose(1, 2).to(features.dtype)


def square_grid(num_patches: int) -> tuple[int, int]:
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ValueError(f"cannot infer the teacher's patch grid from {num_patches} patches; pass teacher_grid")
    return side, side


def feature_loss(student: Tensor, teacher: Tensor, cosine_weight: float = 0.9, smooth_l1_weight: float = 0.1) -> Tensor:
    """``cosine_weight * (1 - cos) + smooth_l1_weight * smooth_l1`` per read-out.

    ``student`` is ``(..., B, P, C)``, ``teacher`` ``(B, P, C)``; the result has shape ``(...)``.
    """
    teacher = teacher.float().expand_as(student)
    student = student.float()
    cos = 1.0 - F.cosine_similarity(student, teacher, dim=-1)  # (..., B, P)
    l1 = F.smooth_l1_loss(student, teacher, reduction="none").mean(-1)
    return (cosine_weight * cos + smooth_l1_weight * l1).mean((-1, -2))


class FeatureHead(nn.Module):
    """A second write-out for distillation: one query per patch reads the latents, then Linear to C_t.

    Lives beside the classifier (it is not part of the deployed model) and reads the latent states
    that :meth:`AdaPerceiver.forward_anytime` returns, for every depth and token prefix at once.
    """

    def __init__(self, model: AdaPerceiver, teacher_dim: int):
        super().__init__()
        d = model.cfg.embed_dim
        self.query_proj = nn.Linear(d, d)
        self.write = CrossAttentionBlock(d, model.cfg.num_heads, model.cfg.qkv_bias, model.cfg.proj_bias)
        self.proj = nn.Linear(d, teacher_dim)
        self.rope = model.rope

    def forward(self, out: AnytimeOutput) -> Tensor:
        """``(len(depths), len(tokens), B, P, teacher_dim)`` features for every read-out of ``out``."""
        if out.states is None or out.patches is None:
            raise ValueError("feature distillation needs the latent states of forward_anytime (block-masked models)")
        num_d, b, n, d = out.states.shape
        queries = self.query_proj(out.patches).repeat(num_d, 1, 1)  # (L*B, P, D)
        p, g = queries.shape[1], len(out.tokens)
        mask = prefix_mask(out.tokens, p, n, queries.device)
        feats = self.write(queries.repeat(1, g, 1), out.states.reshape(num_d * b, n, d), rope_k=self.rope, mask=mask)
        feats = self.proj(feats).reshape(num_d, b, g, p, -1)
        return feats.transpose(1, 2)


class FeatureDistillation(nn.Module):
    """Feature-matching hook for :class:`~adaperceiver.objective.JointObjective` (``extra_losses``).

    ``hook(out, batch, weights) -> (loss, metrics)``: writes every read-out of ``out`` through the
    :class:`FeatureHead`, resamples the teacher's patch features to the student's grid, and sums
    the per-read-out feature losses with the objective's ``(depths, tokens)`` weights. Logits KD
    is done by the objective itself (``kd_weight``, ``kd_temperature``).
    """

    def __init__(self, model: AdaPerceiver, teacher_dim: int, weight: float = 1.0, cosine_weight: float = 0.9,
                 smooth_l1_weight: float = 0.1, teacher_grid: tuple[int, int] | None = None):
        super().__init__()
        self.head = FeatureHead(model, teacher_dim)
        self.weight, self.cosine_weight, self.smooth_l1_weight = weight, cosine_weight, smooth_l1_weight
        self.teacher_grid = teacher_grid

    def forward(self, out: AnytimeOutput, batch, weights: Tensor) -> tuple[Tensor, dict[str, float]]:
        teacher = getattr(batch, "teacher_features", None)
        if teacher is None or not self.weight:
            return out.outputs.new_zeros(()), {}
        student = self.head(out)
        grid = self.teacher_grid or square_grid(teacher.shape[1])
        target = resample_tokens(teacher.to(student.device), grid, out.grid)
        if target.shape[-1] != student.shape[-1]:
            raise ValueError(f"feature head gives {student.shape[-1]} channels, teacher {target.shape[-1]}")
        fl = (feature_loss(student, target, self.cosine_weight, self.smooth_l1_weight) * weights).sum()
        return self.weight * fl, {"feat": float(fl.detach())}
