"""``adaperceiver teacher``: train a static CNN or ViT teacher for distillation with the shared engine."""

from __future__ import annotations

import dataclasses

import torch

from ..models.cnn import CNNConfig, StaticCNN
from ..models.vit import StaticViT, ViTConfig
from ..tasks import get_task
from ..training import ObjectiveConfig, Trainer
from .common import add_train_options, config_from_args

ARCHS = ("cnn", "vit")
# (flag, type, default, help): the "cnn: " / "vit: " prefix says which --arch an option belongs to
_MODEL_OPTIONS = (
    ("--channels", str, "32,64,128", "cnn: channels per stage, 2x2 max-pool between stages"),
    ("--convs-per-stage", int, 1, "cnn: 3x3 conv+BN+ReLU layers per stage"),
    ("--embed-dim", int, 128, "vit: width"),
    ("--depth", int, 6, "vit: blocks"),
    ("--num-heads", int, 4, "vit: attention heads"),
    ("--mlp-ratio", float, 3.0, "vit: MLP hidden / width"),
    ("--patch-size", int, 4, "vit: patch size"),
)


def parse_channels(text: str) -> tuple[int, ...]:
    """``"32,64,128"`` -> ``(32, 64, 128)``."""
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise ValueError(f"--channels takes positive comma-separated ints like 32,64,128; got {text!r}")
    return vals


def register(sub) -> None:
    p = sub.add_parser(
        "teacher", help="train a static CNN or ViT teacher for distillation",
        description="Train a plain (non-adaptive) classifier with the same engine, data and options as "
                    "'adaperceiver train': a small VGG-style CNN (--arch cnn, the default: the strongest teacher "
                    "per CPU second on small images) or a ViT (--arch vit). Its run directory is a --teacher for "
                    "'adaperceiver distill' (logits, and the last feature map / final patch tokens as features).")
    g = p.add_argument_group("teacher model")
    g.add_argument("--arch", choices=ARCHS, default="cnn", help="cnn (default) or vit")
    for flag, typ, default, text in _MODEL_OPTIONS:
        g.add_argument(flag, type=typ, default=None, help=f"{text} (default {default})")
    g = add_train_options(p, epochs_default=5)
    g.add_argument("--name", default="teacher", help="run name: the run directory is OUT/NAME (default teacher)")
    g.add_argument("--resume", action="store_true", help="continue OUT/NAME from its last checkpoint (same options)")
    g.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps in total")
    p.set_defaults(func=_cli_teacher)


def model_options(args) -> dict[str, object]:
    """The model options of ``args.arch`` with their defaults filled in; an option of the other arch is an error."""
    out = {}
    for flag, _, default, text in _MODEL_OPTIONS:
        dest = flag[2:].replace("-", "_")
        value = getattr(args, dest)
        if not text.startswith(args.arch + ":"):
            if value is not None:
                raise ValueError(f"{flag} applies to --arch {text.split(':')[0]}, not --arch {args.arch}")
            continue
        out[dest] = default if value is None else value
    return out


def _cli_teacher(args) -> int:
    arch = f"static_{args.arch}"
    opts = model_options(args)
    cfg = config_from_args(args, task="classification", model=arch, name=args.name, max_steps=args.max_steps)
    cfg = dataclasses.replace(cfg, objective=ObjectiveConfig.static(label_smoothing=args.label_smoothing))
    channels = parse_channels(opts["channels"]) if args.arch == "cnn" else ()
    data = get_task(cfg.task).build_data(cfg)
    torch.manual_seed(cfg.seed)
    if args.arch == "cnn":
        model = StaticCNN(CNNConfig(img_size=data.img_size, in_chans=data.in_chans, channels=channels,
                                    convs_per_stage=opts["convs_per_stage"], num_classes=data.num_classes))
    else:
        model = StaticViT(ViTConfig(img_size=data.img_size, in_chans=data.in_chans, num_classes=data.num_classes,
                                    **opts))
    result = Trainer(cfg, get_task(cfg.task), data=data, model=model).fit(resume=args.resume)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} teacher ({n / 1e6:.2f} M parameters) trained to step {result.step} in "
          f"{result.train_seconds:.0f} s; " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print(f"run directory: {result.run_dir} (use as: adaperceiver distill --teacher {result.run_dir})")
    return 0
