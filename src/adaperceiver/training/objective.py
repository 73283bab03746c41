"""The joint (once-for-all) training objective, computed from ONE backbone pass per batch.

For a batch the model runs once at its maximum token count with one FFN width sampled per sample
(:meth:`AdaPerceiver.forward_anytime`). That pass yields a read-out for every depth ``1..L`` and
every token granularity ``g`` (the prefix ``z[:, :g]``), i.e. an ``(L, G)`` grid of predictions.
The loss is a weighted sum over that grid:

    loss = sum_ij w_ij * [ce_weight * task_loss(out_ij, y) + kd_weight * KD(out_ij, teacher)]
           + sum_k extra_loss_k(anytime_output, batch, w)

with ``w_ij = depth_w(i) * token_w(j)`` normalised to sum to 1; ``depth_w`` is ``d / L``
("linear") or 1 ("uniform"). Widths need no loss term: each sample trains its own width.

Plug-in points, so other objectives need no new training loop:

* ``task_loss(pred, target) -> scalar``: any per-read-out supervised loss (CE for classification,
  a segmentation or depth loss for dense models).
* ``Batch.teacher_logits``: logits KD at temperature ``T`` (scaled by ``T**2``) on every read-out.
* ``extra_losses``: callables ``(AnytimeOutput, Batch, weights) -> (loss, metrics)``, e.g. feature
  distillation; ``weights`` is the ``(L, G)`` read-out weight grid. ``nn.Module`` hooks are
  registered as sub-modules, so their parameters are trained and checkpointed with the objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import UserError, check_fields
from ..losses import cross_entropy, kd_loss
from ..models.adaperceiver import AdaPerceiver, AnytimeOutput
from ..models.config import drop_removed_fields

TaskLoss = Callable[[Tensor, Tensor], Tensor]
ExtraLoss = Callable[[AnytimeOutput, "Batch", Tensor], tuple[Tensor, dict[str, float]]]
DEPTH_WEIGHTINGS = ("linear", "uniform")


# NaN/inf are always refused; weights are relative (above 100 only the step size changes, below 0.01 a term is
# as good as off: use 0), a temperature outside [0.1, 100] flattens or saturates the soft targets, and label
# smoothing above 0.5 leaves almost nothing to learn
OBJECTIVE_CONFIG_RANGES = {"widths": ">= 1", "token_weights": "[0, 100]", "label_smoothing": "[0, 0.5]",
                           "ce_weight": "[0, 100]", "kd_weight": "[0, 100]", "kd_temperature": "[0.1, 100]",
                           "full_token_weight": "[0.01, 100]"}
# removed in 0.2: in-place self-distillation changed nothing measurable (docs/training.md)
REMOVED_OBJECTIVE_FIELDS = {"self_distill_weight": 0.0}


@dataclass
class ObjectiveConfig:
    """How the read-outs of one pass are combined into the training loss."""

    RANGES: ClassVar[dict[str, str]] = OBJECTIVE_CONFIG_RANGES  # shown in the command-line help

    # metadata: help and group for the generated command line (adaperceiver.cli.options)
    all_depths: bool = field(default=True, metadata=dict(
        group="objective", help="depth loss: read out after every block (off: the last block only)"))
    all_tokens: bool = field(default=True, metadata=dict(
        group="objective", help="token loss: read out every granularity (off: all latents only)"))
    sample_widths: bool = field(default=True, metadata=dict(
        group="objective", help="one random trained width per sample (off: full width only)"))
    widths: tuple[int, ...] | None = field(default=None, metadata=dict(
        group="objective", help="widths to sample from (default: the model's trained widths)"))
    depth_weighting: str = field(default="linear", metadata=dict(
        group="objective", choices=DEPTH_WEIGHTINGS, help="weights of the per-block read-outs: linear (i+1)/L or uniform"))
    token_weights: tuple[float, ...] | None = field(default=None, metadata=dict(
        group="objective", help="one weight per token granularity, e.g. 1,1,1,2 (default: uniform)"))
    full_token_weight: float = field(default=1.0, metadata=dict(
        group="objective", help="multiplies the weight of the all-latents read-outs (any granularity count), e.g. 3"))
    label_smoothing: float = field(default=0.0, metadata=dict(group="objective", help="cross-entropy label smoothing"))
    ce_weight: float = field(default=1.0, metadata=dict(group="distillation", help="weight of the supervised task loss"))
    kd_weight: float = field(default=1.0, metadata=dict(
        group="distillation", help="weight of logits distillation (only when the batch carries teacher logits)"))
    kd_temperature: float = field(default=1.0, metadata=dict(group="distillation", help="KD temperature T"))

    def __post_init__(self) -> None:
        check_fields(self, OBJECTIVE_CONFIG_RANGES, "objective config")  # every field's type and range, up front
        if self.depth_weighting not in DEPTH_WEIGHTINGS:
            raise ValueError(f"depth_weighting must be one of {list(DEPTH_WEIGHTINGS)}, got {self.depth_weighting!r}")
        if self.token_weights is not None and not sum(self.token_weights) > 0:
            raise ValueError(f"token_weights must be >= 0 with a positive sum, got {list(self.token_weights)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ObjectiveConfig":
        """An objective config from its saved dict; fields removed since (at their defaults) are dropped."""
        return cls(**drop_removed_fields(d, REMOVED_OBJECTIVE_FIELDS, "objective config"))

    @classmethod
    def static(cls, **kw: Any) -> "ObjectiveConfig":
        """A plain single-configuration objective (static baselines): last block, all tokens, full width."""
        return cls(all_depths=False, all_tokens=False, sample_widths=False, **kw)


@dataclass
class Batch:
    """One training batch as the objective sees it."""

    images: Tensor
    targets: Tensor
    teacher_logits: Tensor | None = None  # (B, classes): enables logits KD
    teacher_features: Tensor | None = None  # (B, P_t, C_t): for feature-distillation hooks
    extras: dict[str, Any] = field(default_factory=dict)  # "widths": per-sample widths chosen by the caller


def per_readout_losses(task_loss: TaskLoss, outputs: Tensor, target: Tensor) -> Tensor:
    """``(L, G)`` task losses, one per read-out of an ``(L, G, B, ...)`` output grid."""
    fast = getattr(task_loss, "per_readout", None)
    if fast is not None:
        return fast(outputs, target)
    num_d, num_t = outputs.shape[:2]
    return torch.stack([torch.stack([task_loss(outputs[i, j], target) for j in range(num_t)]) for i in range(num_d)])


def readout_grid_weights(depths: Sequence[int], tokens: Sequence[int], num_blocks: int,
                         depth_weighting: str = "linear", token_weights: Sequence[float] | None = None,
                         full_token_weight: float = 1.0) -> Tensor:
    """``(len(depths), len(tokens))`` weights summing to 1: depth weight x token weight, the last
    (largest) token count's weight multiplied by ``full_token_weight``."""
    if depth_weighting not in DEPTH_WEIGHTINGS:
        raise ValueError(f"depth_weighting must be one of {list(DEPTH_WEIGHTINGS)}, got {depth_weighting!r}")
    dw = torch.tensor([d / num_blocks if depth_weighting == "linear" else 1.0 for d in depths], dtype=torch.float32)
    if token_weights is None:
        tw = torch.ones(len(tokens))
    else:
        if len(token_weights) != len(tokens):
            raise ValueError(f"token_weights has {len(token_weights)} entries but the model reads out "
                             f"{len(tokens)} token granularities {list(tokens)}")
        tw = torch.tensor(list(token_weights), dtype=torch.float32)
    tw[-1] = tw[-1] * full_token_weight
    w = dw[:, None] * tw[None, :]
    return w / w.sum()


class JointObjective(nn.Module):
    """``objective(model, batch, generator) -> (loss, metrics)`` over every read-out of one pass.

    ``metrics`` holds floats for logging: ``loss``, ``task`` (weighted task loss), ``task_full``
    (task loss of the full configuration), ``acc_full`` (top-1 %) for classification, ``kd`` when a teacher
    is present, and whatever the extra losses report.
    """

    def __init__(self, cfg: ObjectiveConfig | None = None, task_loss: TaskLoss | None = None,
                 extra_losses: Sequence[ExtraLoss] = ()):
        super().__init__()
        self.cfg = cfg or ObjectiveConfig()
        self.task_loss = task_loss or cross_entropy(self.cfg.label_smoothing)
        self.extra_losses = list(extra_losses)
        # modules among the hooks become sub-modules: trained, moved and checkpointed with the objective
        self.extra_modules = nn.ModuleList(h for h in self.extra_losses if isinstance(h, nn.Module))

    # ----------------------------------------------------------------------------------------------
    def check(self, model: nn.Module, has_teacher: bool) -> None:
        """Refuse, before training, an objective that cannot train ``model``: nothing to learn (no task loss,
        no teacher, no extra loss), token weights that do not match its granularities, widths past its embed_dim."""
        if self.cfg.ce_weight == 0 and not has_teacher and not self.extra_losses:
            raise UserError("objective ce_weight is 0 and there is no teacher or extra loss: nothing to learn")
        if self.cfg.token_weights is not None:  # one weight per read-out granularity
            self.weights(model)
        top = getattr(getattr(model, "cfg", None), "embed_dim", None)
        if self.cfg.widths and top and max(self.cfg.widths) > top:
            raise UserError(f"objective widths {list(self.cfg.widths)} must be in [1, {top}] (the model's embed_dim)")

    def sample_widths(self, model: AdaPerceiver, batch_size: int, generator: torch.Generator | None = None) -> Tensor | None:
        """One width per sample, uniformly from the trained widths (None when sampling is off)."""
        if not self.cfg.sample_widths:
            return None
        widths = self.cfg.widths or model.cfg.widths
        bad = [w for w in widths if not 1 <= w <= model.cfg.embed_dim]
        if bad:
            raise ValueError(f"objective widths {bad} outside [1, {model.cfg.embed_dim}]; model widths {list(model.cfg.widths)}")
        if len(widths) == 1:
            return None if widths[0] == model.cfg.embed_dim else torch.full((batch_size,), widths[0])
        idx = torch.randint(0, len(widths), (batch_size,), generator=generator)
        return torch.tensor(widths)[idx]

    def readouts(self, model: AdaPerceiver) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (depths, token counts) read out for ``model`` under this config."""
        n, depth = model.cfg.num_latents, model.num_blocks
        depths = tuple(range(1, depth + 1)) if self.cfg.all_depths else (depth,)
        tokens = tuple(g for g in model.cfg.token_grans if g < n) + (n,) if self.cfg.all_tokens else (n,)
        return depths, tokens

    def weights(self, model: AdaPerceiver) -> Tensor:
        depths, tokens = self.readouts(model)
        return readout_grid_weights(depths, tokens, model.num_blocks, self.cfg.depth_weighting,
                                    self.cfg.token_weights if self.cfg.all_tokens else None,
                                    self.cfg.full_token_weight)

    # ----------------------------------------------------------------------------------------------
    def forward(self, model: AdaPerceiver, batch: Batch,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, metrics)``; the metrics are detached scalar tensors on the loss's device, so a training
        loop can sum them without a host synchronisation and read them at its log interval."""
        cfg = self.cfg
        depths, tokens = self.readouts(model)
        if "widths" in batch.extras:  # drawn by the caller (the trainer draws for the global batch)
            width = batch.extras["widths"]
        else:
            width = self.sample_widths(model, batch.images.shape[0], generator)
        out = model.forward_anytime(batch.images, width=width, depths=depths, token_counts=tokens)
        weights = self.weights(model).to(out.outputs.device)

        total = out.outputs.new_zeros((), dtype=torch.float32)
        metrics: dict[str, Tensor] = {}
        if cfg.ce_weight:
            per = per_readout_losses(self.task_loss, out.outputs, batch.targets)
            task = (per.float() * weights).sum()
            total = total + cfg.ce_weight * task
            metrics["task"] = task.detach()
            metrics["task_full"] = per[-1, -1].detach().float()
        full = out.outputs[-1, -1]
        if full.dim() == 2 and batch.targets.dim() == 1:
            metrics["acc_full"] = 100.0 * (full.detach().argmax(-1) == batch.targets).float().mean()
        if cfg.kd_weight and batch.teacher_logits is not None:
            teacher = batch.teacher_logits.to(out.outputs.device)
            if teacher.shape != full.shape:
                raise ValueError(f"teacher logits of shape {tuple(teacher.shape)} do not match the student's "
                                 f"{tuple(full.shape)}")
            kd = (kd_loss(out.outputs, teacher, cfg.kd_temperature) * weights).sum()
            total = total + cfg.kd_weight * kd
            metrics["kd"] = kd.detach().float()
        for hook in self.extra_losses:
            extra, extra_metrics = hook(out, batch, weights)
            total = total + extra
            metrics.update({k: torch.as_tensor(v, dtype=torch.float32, device=total.device).detach()
                            for k, v in extra_metrics.items()})
        metrics["loss"] = total.detach()
        return total, metrics


class StepModule(nn.Module):
    """Model + objective as one module: ``forward(batch, gen) -> (loss, metrics)``.

    Under torchrun this is what DistributedDataParallel wraps, so the forward of every step (which
    calls ``model.forward_anytime``) passes through DDP and gradients of the model *and* of the
    objective's own modules (e.g. a distillation head) are averaged across ranks.
    """

    def __init__(self, model: nn.Module, objective: JointObjective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch, gen: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(self.model, batch, gen)


__all__ = ["Batch", "ExtraLoss", "JointObjective", "ObjectiveConfig", "StepModule", "TaskLoss",
           "per_readout_losses", "readout_grid_weights"]
