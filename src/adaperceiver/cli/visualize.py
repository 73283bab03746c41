"""``adaperceiver dense-visualize``: picture of segmentation / depth predictions at a few configurations."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import from_pretrained, output_path
from ..evaluation.reports import plot_dense_predictions
from .common import add_data_options, add_device_option, command_device, load_dataset, parse_config_triple


def register(sub) -> None:
    p = sub.add_parser("dense-visualize", help="picture of segmentation / depth predictions at small and full configurations",
                       description="For the first N images of a dataset, draw image | ground truth | prediction at "
                       "each configuration (default: a small one and the full one) and save a PNG.")
    p.add_argument("--model", required=True, help="a segmentation or depth model / run directory, or hf-hub:OWNER/NAME[@REVISION]")
    p.add_argument("--data", default="fashion_mnist_seg",
                   help="dataset: fashion_mnist_seg, visp_castel, ade20k:PATH, nyu:PATH (default: fashion_mnist_seg)")
    p.add_argument("--split", default="val", help="split (default: val)")
    p.add_argument("--num", type=int, default=4, help="number of images (default: 4)")
    p.add_argument("--config", action="append", default=None, metavar="T,D,W",
                   help="a configuration tokens,depth,width (repeatable; default: small and full)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/predictions.png; for a hub model ./OWNER--NAME/predictions.png)")
    add_data_options(p)
    add_device_option(p)
    p.set_defaults(func=_cli_visualize)


def _cli_visualize(args) -> int:
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    configs = [parse_config_triple(c, "--config") for c in args.config] if args.config else None
    model = from_pretrained(args.model, map_location=command_device(args.device))
    data = load_dataset(args.data, args.split, model, args)
    items = [data[i] for i in range(min(args.num, len(data)))]
    images = torch.stack([x for x, _ in items])
    targets = torch.stack([torch.as_tensor(y) for _, y in items])
    out = Path(args.out) if args.out else output_path(args.model, "predictions.png")
    plot_dense_predictions(model, images, targets, out, configs, getattr(data, "classes", None))
    print(f"wrote {out}")
    return 0
