"""``adaperceiver teacher``: train a static ViT teacher for distillation with the shared engine."""

from __future__ import annotations

import torch

from ..models.util import num_parameters
from ..models.vit import StaticViT, ViTConfig
from ..tasks import get_task
from ..training import ObjectiveConfig, TrainConfig, Trainer
from .options import add_config_options, config_from_args, option_values


def register(sub) -> None:
    p = sub.add_parser(
        "teacher", help="train a static ViT teacher for distillation",
        description="Train a plain (non-adaptive) ViT classifier with the same engine, data and options as "
                    "'adaperceiver train'. Its run directory is a --teacher for 'adaperceiver distill' (logits "
                    "and final patch tokens as features).")
    add_config_options(p, ViTConfig, ("teacher model",), prefix="vit:")
    add_config_options(p, TrainConfig, ("data", "optimisation", "run"), include=("objective.label_smoothing",),
                       defaults={"name": "teacher"})
    p.add_argument("--resume", action="store_true",
                   help="continue OUT/NAME from its last checkpoint (same options); starts fresh when it has none")
    p.set_defaults(func=_cli_teacher)


def _cli_teacher(args) -> int:
    objective = ObjectiveConfig.static(label_smoothing=option_values(args)["objective.label_smoothing"])
    cfg = config_from_args(TrainConfig, args, task="classification", model="static_vit", objective=objective)
    data = get_task(cfg.task).build_data(cfg)
    torch.manual_seed(cfg.seed)
    vit = StaticViT(config_from_args(ViTConfig, args, prefix="vit:", img_size=data.img_size, in_chans=data.in_chans,
                                     num_classes=data.num_classes))
    result = Trainer(cfg, get_task(cfg.task), data=data, model=vit).fit(resume=args.resume)
    n = num_parameters(vit)
    state = "finished at step" if result.finished else "stopped at step"
    print(f"teacher ({n / 1e6:.2f} M parameters) {state} {result.step} after {result.train_seconds:.0f} s; " +
          ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print(f"run directory: {result.run_dir} (use as: adaperceiver distill --teacher {result.run_dir})")
    return 0
