"""``adaperceiver teacher``: train a static CNN or ViT teacher for distillation with the shared engine."""

from __future__ import annotations

import torch

from ..errors import UserError
from ..models.cnn import CNNConfig, StaticCNN
from ..models.util import num_parameters
from ..models.vit import StaticViT, ViTConfig
from ..tasks import get_task
from ..training import ObjectiveConfig, TrainConfig, Trainer
from .options import add_config_options, config_from_args, option_values

ARCHS = {"cnn": (CNNConfig, StaticCNN), "vit": (ViTConfig, StaticViT)}


def register(sub) -> None:
    p = sub.add_parser(
        "teacher", help="train a static CNN or ViT teacher for distillation",
        description="Train a plain (non-adaptive) classifier with the same engine, data and options as "
                    "'adaperceiver train': a small VGG-style CNN (--arch cnn, the default: the strongest teacher "
                    "per CPU second on small images) or a ViT (--arch vit). Its run directory is a --teacher for "
                    "'adaperceiver distill' (logits, and the last feature map / final patch tokens as features).")
    p.add_argument("--arch", choices=tuple(ARCHS), default="cnn", help="teacher architecture (default cnn)")
    for arch, (cls, _) in ARCHS.items():
        add_config_options(p, cls, (f"{arch} teacher",), prefix=f"{arch}:")
    add_config_options(p, TrainConfig, ("data", "optimisation", "run"), include=("objective.label_smoothing",),
                       defaults={"name": "teacher"})
    p.add_argument("--resume", action="store_true",
                   help="continue OUT/NAME from its last checkpoint (same options); starts fresh when it has none")
    p.set_defaults(func=_cli_teacher)


def _cli_teacher(args) -> int:
    for dest, opt in getattr(args, "given", {}).items():  # an option of the other architecture is a mistake
        arch = dest.partition(":")[0]
        if arch in ARCHS and arch != args.arch:
            raise UserError(f"{opt} applies to --arch {arch}, not --arch {args.arch}")
    cls, build = ARCHS[args.arch]
    objective = ObjectiveConfig.static(label_smoothing=option_values(args)["objective.label_smoothing"])
    cfg = config_from_args(TrainConfig, args, task="classification", model=f"static_{args.arch}", objective=objective)
    data = get_task(cfg.task).build_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build(config_from_args(cls, args, prefix=f"{args.arch}:", img_size=data.img_size, in_chans=data.in_chans,
                                   num_classes=data.num_classes))
    result = Trainer(cfg, get_task(cfg.task), data=data, model=model).fit(resume=args.resume)
    state = "finished at step" if result.finished else "stopped at step"
    print(f"{args.arch} teacher ({num_parameters(model) / 1e6:.2f} M parameters) {state} {result.step} after "
          f"{result.train_seconds:.0f} s; " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print(f"run directory: {result.run_dir} (use as: adaperceiver distill --teacher {result.run_dir})")
    return 0
