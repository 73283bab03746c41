"""Distillation: the feature write-out head and the feature-matching hook of the objective.

The losses themselves (:func:`~adaperceiver.losses.kd_loss`, :func:`~adaperceiver.losses.feature_loss`)
live in :mod:`adaperceiver.losses`.

The student gets a separate feature write-out (:class:`FeatureHead`): one query per patch attends
to the latents, as in the dense model, and a projection maps to the teacher's channel count.
Both losses are applied to every (depth, token-count) read-out of the one backbone pass, weighted
like the supervised objective.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import feature_loss
from ..models.adaperceiver import AdaPerceiver, AnytimeOutput
from ..models.layers import CrossAttentionBlock


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
        num_d, b = out.states.shape[:2]
        queries = self.query_proj(out.patches).repeat(num_d, 1, 1)  # (L*B, P, D)
        feats = self.write.forward_prefixes(queries, out.states.flatten(0, 1), out.tokens, rope_k=self.rope)
        feats = self.proj(feats)  # (L*B, G, P, C_t)
        return feats.unflatten(0, (num_d, b)).transpose(1, 2)


class FeatureDistillation(nn.Module):
    """Feature-matching hook for :class:`~adaperceiver.training.objective.JointObjective` (``extra_losses``).

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


__all__ = ["FeatureDistillation", "FeatureHead", "resample_tokens", "square_grid"]
