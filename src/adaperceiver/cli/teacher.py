"""``adaperceiver teacher``: train a static ViT teacher for distillation with the shared engine."""

from __future__ import annotations

import dataclasses

import torch

from ..models.vit import StaticViT, ViTConfig
from ..tasks import get_task
from ..training import ObjectiveConfig, Trainer
from .common import add_train_options, config_from_args

def register(sub) -> None:
    p = sub.add_parser(
        "teacher", help="train a static ViT teacher for distillation",
        description="Train a plain (non-adaptive) ViT classifier with the same engine, data and options as "
                    "'adaperceiver train'. Its run directory is a --teacher for 'adaperceiver distill' (logits "
                    "and final patch tokens as features).")
    g = p.add_argument_group("teacher model")
    g.add_argument("--embed-dim", type=int, default=128, help="width (default 128)")
    g.add_argument("--depth", type=int, default=6, help="blocks (default 6)")
    g.add_argument("--num-heads", type=int, default=4, help="attention heads (default 4)")
    g.add_argument("--mlp-ratio", type=float, default=3.0, help="MLP hidden / width (default 3.0)")
    g.add_argument("--patch-size", type=int, default=4, help="patch size (default 4)")
    g = add_train_options(p, epochs_default=5)
    g.add_argument("--name", default="teacher", help="run name: the run directory is OUT/NAME (default teacher)")
    g.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps in total")
    g.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (default: each epoch)")
    g.add_argument("--resume", action="store_true",
                   help="continue OUT/NAME from its last checkpoint (same options); starts fresh when it has none")
    p.set_defaults(func=_cli_teacher)


def _cli_teacher(args) -> int:
    cfg = config_from_args(args, task="classification", model="static_vit", name=args.name, max_steps=args.max_steps,
                           checkpoint_every=args.checkpoint_every)
    cfg = dataclasses.replace(cfg, objective=ObjectiveConfig.static(label_smoothing=args.label_smoothing))
    data = get_task(cfg.task).build_data(cfg)
    torch.manual_seed(cfg.seed)
    vit = StaticViT(ViTConfig(img_size=data.img_size, patch_size=args.patch_size, in_chans=data.in_chans,
                              embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads,
                              mlp_ratio=args.mlp_ratio, num_classes=data.num_classes))
    result = Trainer(cfg, get_task(cfg.task), data=data, model=vit).fit(resume=args.resume)
    n = sum(p.numel() for p in vit.parameters())
    state = "finished at step" if result.finished else "stopped at step"
    print(f"teacher ({n / 1e6:.2f} M parameters) {state} {result.step} after {result.train_seconds:.0f} s; " +
          ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print(f"run directory: {result.run_dir} (use as: adaperceiver distill --teacher {result.run_dir})")
    return 0
