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
        num_d, b = out.states.shape[:2]
        queries = self.query_proj(out.patches).repeat(num_d, 1, 1)  # (L*B, P, D)
        feats = self.write.forward_prefixes(queries, out.states.flatten(0, 1), out.tokens, rope_k=self.rope)
        feats = self.proj(feats)  # (L*B, G, P, C_t)
        return feats.unflatten(0, (num_d, b)).transpose(1, 2)


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


# --------------------------------------------------------------------------------------------------
# command line: adaperceiver distill
def register_cli(sub) -> None:
    from .training import _add_train_options

    p = sub.add_parser(
        "distill", help="distill an AdaPerceiver from a teacher (logits KD + per-patch feature matching)",
        description="Stage 1 of the paper's recipe: train an AdaPerceiver jointly over tokens x depth x width "
                    "against a teacher's logits (KL at temperature T, times T^2) and patch features (a separate "
                    "feature write-out head; 0.9 cosine distance + 0.1 smooth-L1), on every read-out of one "
                    "backbone pass. Stage 2: adaperceiver train --init-from RUN_DIR --freeze-backbone.")
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", required=True,
                   help="a run directory of this library (e.g. from 'adaperceiver teacher'), "
                        "'timm:NAME[:CHECKPOINT]' (needs timm; never downloads) or 'python:MODULE:ATTR'")
    g.add_argument("--teacher-cache", default=None, metavar="DIR",
                   help="store teacher outputs here and reuse them in later epochs (exact for un-augmented "
                        "images: use with --no-augment to skip the teacher after the first epoch)")
    g.add_argument("--kd-weight", type=float, default=1.0, help="weight of logits KD (default 1.0)")
    g.add_argument("--temperature", type=float, default=1.0, help="KD temperature T (default 1.0)")
    g.add_argument("--feature-weight", type=float, default=1.0, help="weight of feature matching, 0 = off (default 1.0)")
    g.add_argument("--ce-weight", type=float, default=0.0,
                   help="weight of the supervised cross-entropy (default 0, as in the paper's recipe)")
    g = p.add_argument_group("student")
    g.add_argument("--model", default="adaperceiver_tiny", help="student preset (default adaperceiver_tiny)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a student config field, e.g. --set embed_dim=96")
    g = _add_train_options(p, epochs_default=5)
    g.add_argument("--name", default="distill", help="run name: the run directory is OUT/NAME (default distill)")
    g.add_argument("--resume", action="store_true", help="continue OUT/NAME from its last checkpoint (same options)")
    g.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps in total")
    g.add_argument("--log-every", type=int, default=20, help="steps between metrics.csv rows (default 20)")
    p.set_defaults(func=_cli_distill)


def _cli_distill(args) -> int:
    import dataclasses

    from torch.utils.data import DataLoader

    from . import distributed
    from .tasks import get_task
    from .teachers import CachedTeacher, load_teacher
    from .training import Trainer, _config_from_args, parse_overrides

    info = distributed.setup(args.device)
    try:
        cfg = _config_from_args(args, task="classification", model=args.model,
                                model_overrides=parse_overrides(args.overrides), name=args.name, max_steps=args.max_steps,
                                log_every=args.log_every)
        cfg = dataclasses.replace(cfg, objective=dataclasses.replace(
            cfg.objective, ce_weight=args.ce_weight, kd_weight=args.kd_weight, kd_temperature=args.temperature))
        teacher = load_teacher(args.teacher)
        task = get_task(cfg.task)
        data = task.build_data(cfg)
        torch.manual_seed(cfg.seed)  # the same student initialisation as 'adaperceiver train' with this seed
        student = task.build_model(cfg, data)
        probe = teacher(next(iter(DataLoader(data.train, batch_size=2)))[0])
        if probe.logits is not None and probe.logits.shape[-1] != data.num_classes:
            raise ValueError(f"the teacher predicts {probe.logits.shape[-1]} classes, the dataset has {data.num_classes}")
        extra = []
        if args.feature_weight > 0 and probe.features is not None:
            extra.append(FeatureDistillation(student, probe.features.shape[-1], weight=args.feature_weight))
        if args.teacher_cache:
            teacher = CachedTeacher(teacher, args.teacher_cache, capacity=len(data.train))
        result = Trainer(cfg, teacher=teacher, extra_losses=extra, data=data, model=student,
                         dist_info=info).fit(resume=args.resume)
        if info.is_main:
            what = "logits KD" + (" + feature matching" if extra else "") + (f" + {args.ce_weight} x CE" if args.ce_weight else "")
            print(f"distilled ({what}) from {teacher.name if hasattr(teacher, 'name') else args.teacher} "
                  f"to step {result.step}; {result.train_seconds:.0f} s; " +
                  ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
            print(f"run directory: {result.run_dir}; stage 2: adaperceiver train --init-from {result.run_dir} "
                  f"--freeze-backbone --name {args.name}_ft")
        return 0
    finally:
        distributed.teardown()
