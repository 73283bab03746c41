"""Pieces shared by several commands: the training options and their mapping to :class:`TrainConfig`,
and the parsers of small command-line values."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..data import get_dataset
from ..training import ObjectiveConfig, TrainConfig


def parse_config_triple(text: str) -> tuple[int, int, int]:
    """``"16,3,48"`` -> ``(16, 3, 48)`` (tokens, depth, width)."""
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise ValueError(f"a configuration is TOKENS,DEPTH,WIDTH like 16,3,48; got {text!r}")
    return vals  # type: ignore[return-value]


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["embed_dim=96", "token_grans=[8,16,32]"]`` -> a dict (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (a model config field), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_train_options(p, epochs_default: int, lr_default: float = 2e-3, augment_default: bool = True,
                       batch_default: int = 128):
    """Options shared by train and demo; returns the "run" argument group for more options."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="fashion_mnist",
                   help="fashion_mnist (Debian dataset-fashion-mnist), fashion_mnist_cluttered (its items on a 64 px "
                        "canvas among clutter; ..._cluttered56/60 for smaller canvases), imagefolder (needs --data-dir "
                        "with train/<class>/ and val/<class>/) or digits (sklearn, 8x8); default: fashion_mnist")
    g.add_argument("--data-dir", default=None, help="dataset root (Fashion-MNIST IDX files or an ImageFolder tree)")
    g.add_argument("--image-size", type=int, default=None, help="resize images to this square size")
    g.add_argument("--train-subset", type=int, default=None, help="train on a fixed random subset of N images")
    g.add_argument("--val-subset", type=int, default=None, help="evaluate on a fixed random subset of N images")
    if augment_default:
        g.add_argument("--no-augment", dest="augment", action="store_false",
                       help="turn off the random crop (padding 2) + horizontal flip augmentation")
    else:
        g.add_argument("--augment", dest="augment", action="store_true",
                       help="turn on random crop (padding 2) + horizontal flip (off in the short demo schedule)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=epochs_default, help=f"training epochs (default {epochs_default})")
    g.add_argument("--batch-size", type=int, default=batch_default, help=f"images per step (default {batch_default})")
    g.add_argument("--lr", type=float, default=lr_default, help=f"peak AdamW learning rate (default {lr_default:g})")
    g.add_argument("--min-lr", type=float, default=2e-5, help="final learning rate of the cosine (default 2e-5)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay on matrices (default 0.05)")
    g.add_argument("--warmup-steps", type=int, default=200, help="linear warm-up steps (default 200)")
    g.add_argument("--grad-clip", type=float, default=3.0, help="max gradient norm, 0 = off (default 3.0)")
    g.add_argument("--accum-steps", type=int, default=1,
                   help="gradient accumulation: micro-batches per optimizer step (default 1); --batch-size stays "
                        "the global batch per step")
    g.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the weights, 0 = off (default 0.999)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (default 0)")
    g.add_argument("--depth-weighting", choices=("linear", "uniform"), default="linear",
                   help="weights of the per-block read-outs: linear (i+1)/L or uniform (default linear)")
    g.add_argument("--token-weights", default=None,
                   help="comma-separated weight per token granularity, e.g. 1,1,1,2 (default: uniform)")
    g.add_argument("--no-width-sampling", action="store_true",
                   help="train at full width only instead of one random trained width per sample")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs", help="parent directory of run directories (default runs)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return g


def config_from_args(args, **extra: Any) -> TrainConfig:
    tw = tuple(float(v) for v in args.token_weights.split(",")) if args.token_weights else None
    obj = ObjectiveConfig(depth_weighting=args.depth_weighting, token_weights=tw, label_smoothing=args.label_smoothing,
                          sample_widths=not args.no_width_sampling)
    return TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size, train_subset=args.train_subset,
        val_subset=args.val_subset, augment=args.augment, num_workers=args.num_workers, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, accum_steps=args.accum_steps,
        ema_decay=args.ema_decay, objective=obj,
        seed=args.seed, out_dir=args.out, device=args.device, progress=not args.no_progress, **extra)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--latency-batch-sizes must be comma-separated ints like 1,64, got {text!r}") from None
    if any(b < 1 for b in sizes):
        raise ValueError(f"--latency-batch-sizes must be >= 1, got {text!r}")
    return sizes


def load_dataset(spec: str, split: str):
    """``fashion-mnist``, ``digits`` or ``imagefolder:PATH`` via :func:`adaperceiver.data.get_dataset`."""
    name, _, root = spec.partition(":")
    return get_dataset(name, split, root=root or None)
