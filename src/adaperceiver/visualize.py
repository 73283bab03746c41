"""Pictures of dense predictions: image | ground truth | prediction at a small and at the full configuration.

``plot_dense_predictions(model, images, targets, path)`` writes one PNG (matplotlib, Agg backend)
with one row per image. Segmentation maps use a fixed palette (ignored pixels black); depth maps
share one colour scale per row (pixels without ground truth black). Each prediction column is
titled with its configuration (tokens/depth/width) and encoder GFLOPs; each cell with its
per-image mIoU or AbsRel.

CLI: ``adaperceiver dense-visualize --model RUN_DIR --data fashion_mnist_seg --out pic.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .metrics import DepthMetric, SegmentationMetric

Config = tuple[int, int, int]


def palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours: class 0 dark grey, the rest well separated hues."""
    import matplotlib

    if num_classes <= 21:
        cmap = matplotlib.colormaps["tab10" if num_classes <= 11 else "tab20"]
        rgb = [cmap(i)[:3] for i in range(num_classes - 1)]
    else:
        rgb = [matplotlib.colormaps["hsv"](i / num_classes)[:3] for i in range(num_classes - 1)]
    cols = [(60, 60, 60)] + [tuple(int(255 * c) for c in col) for col in rgb]
    return np.array(cols, dtype=np.uint8)


def colorize_labels(labels: Tensor | np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """``(H, W)`` labels -> ``(H, W, 3)`` uint8 colours; ``ignore_index`` and out-of-range labels black."""
    lab = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(np.int64)
    out = np.zeros((*lab.shape, 3), np.uint8)
    ok = (lab >= 0) & (lab < num_classes) & (lab != ignore_index)
    out[ok] = palette(num_classes)[lab[ok]]
    return out


def default_configs(model: nn.Module) -> list[Config]:
    """A small configuration (fewest tokens, half the blocks, narrowest width) and the full one."""
    cfg = model.cfg
    small = (cfg.trained_grans[0], max(1, model.num_blocks // 2), min(cfg.widths))
    full = (cfg.num_latents, model.num_blocks, cfg.embed_dim)
    return [small, full] if small != full else [full]


def _show_image(ax, img: Tensor) -> None:
    x = img.detach().float().cpu()
    x = (x - x.amin()) / (x.amax() - x.amin()).clamp_min(1e-8)
    if x.shape[0] == 1:
        ax.imshow(x[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(x[:3].permute(1, 2, 0).numpy())


def encoder_gflops(model: nn.Module, config: Config, image_hw: tuple[int, int]) -> float:
    """GFLOPs per image of the backbone (encoder + write-out) at ``config``, head excluded."""
    from .flops import count_flops

    backbone = getattr(model, "backbone", model)
    x = torch.zeros(1, model.cfg.in_chans, *image_hw, device=next(model.parameters()).device)
    t, d, w = config
    return count_flops(backbone, x, tokens=t, depth=d, width=w) / 1e9


@torch.no_grad()
def plot_dense_predictions(model: nn.Module, images: Tensor, targets: Tensor, path: str | Path,
                           configs: Sequence[Config] | None = None, class_names: Sequence[str] | None = None,
                           title: str | None = None) -> Path:
    """Write ``path``: per image, the input, the ground truth and the prediction at each of ``configs``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = getattr(model, "task", None)
    if task not in ("segmentation", "depth"):
        raise ValueError(f"expected a SegmentationModel or DepthModel, got {type(model).__name__}")
    configs = list(configs or default_configs(model))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds = [model(images.to(device), tokens=t, depth=d, width=w).cpu() for t, d, w in configs]
    model.train(was_training)
    gflops = [encoder_gflops(model, c, tuple(images.shape[-2:])) for c in configs]
    n, cols = images.shape[0], 2 + len(configs)
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols, 2.3 * n + 0.6), squeeze=False)
    head = model.head_cfg
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        if task == "segmentation":
            k, ign = head.num_classes, head.ignore_index
            axes[i, 1].imshow(colorize_labels(targets[i], k, ign))
            for j, p in enumerate(preds):
                m = SegmentationMetric(k, ign)
                m.update(p[i:i + 1], targets[i:i + 1].cpu())
                axes[i, 2 + j].imshow(colorize_labels(p[i].argmax(0), k, ign))
                axes[i, 2 + j].set_xlabel(f"mIoU {m.compute()['miou']:.1f}", fontsize=8)
        else:
            gt = targets[i].reshape(targets.shape[-2:]).cpu()
            valid = gt > 0
            lo = float(gt[valid].min()) if valid.any() else head.min_depth
            hi = float(gt[valid].max()) if valid.any() else head.max_depth
            cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="black")
            axes[i, 1].imshow(np.ma.masked_where(~valid.numpy(), gt.numpy()), cmap=cmap, vmin=lo, vmax=hi)
            for j, p in enumerate(preds):
                m = DepthMetric(max_depth=head.max_depth)
                m.update(p[i:i + 1], targets[i:i + 1].cpu())
                axes[i, 2 + j].imshow(p[i, 0].numpy(), cmap=cmap, vmin=lo, vmax=hi)
                r = m.compute()
                axes[i, 2 + j].set_xlabel(f"AbsRel {r['abs_rel']:.3f}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    axes[0, 1].set_title("ground truth", fontsize=9)
    for j, (c, g) in enumerate(zip(configs, gflops)):
        axes[0, 2 + j].set_title(f"tokens/depth/width\n{c[0]}/{c[1]}/{c[2]}: {g:.3f} GFLOPs", fontsize=8)
    if task == "segmentation" and class_names:
        from matplotlib.patches import Patch

        cols_ = palette(head.num_classes) / 255.0
        handles = [Patch(color=cols_[k], label=str(name)) for k, name in enumerate(class_names[: head.num_classes])]
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(title or f"{task}: ground truth vs small and full configuration (encoder GFLOPs per image)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if task == "segmentation" and class_names else 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _parse_config(text: str) -> Config:
    try:
        t, d, w = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"a configuration is 'tokens,depth,width' (three ints), got {text!r}") from None
    return t, d, w


def register_cli(sub) -> None:
    p = sub.add_parser("dense-visualize", help="picture of segmentation / depth predictions at small and full configurations",
                       description="For the first N images of a dataset, draw image | ground truth | prediction at "
                       "each configuration (default: a small one and the full one) and save a PNG.")
    p.add_argument("--model", required=True, help="a segmentation or depth model / run directory")
    p.add_argument("--data", default="fashion_mnist_seg",
                   help="dataset: fashion_mnist_seg, visp_castel, ade20k:PATH, nyu:PATH (default: fashion_mnist_seg)")
    p.add_argument("--split", default="val", help="split (default: val)")
    p.add_argument("--num", type=int, default=4, help="number of images (default: 4)")
    p.add_argument("--config", action="append", default=None, metavar="T,D,W",
                   help="a configuration tokens,depth,width (repeatable; default: small and full)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/predictions.png)")
    p.set_defaults(func=_cli_visualize)


def _cli_visualize(args) -> int:
    from .checkpoint import from_pretrained
    from .data import get_dataset

    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    model = from_pretrained(args.model)
    name, _, root = args.data.partition(":")
    data = get_dataset(name, args.split, root=root or None)
    items = [data[i] for i in range(min(args.num, len(data)))]
    images = torch.stack([x for x, _ in items])
    targets = torch.stack([torch.as_tensor(y) for _, y in items])
    configs = [_parse_config(c) for c in args.config] if args.config else None
    out = Path(args.out) if args.out else Path(args.model) / "predictions.png"
    plot_dense_predictions(model, images, targets, out, configs, getattr(data, "classes", None))
    print(f"wrote {out}")
    return 0


__all__ = ["colorize_labels", "default_configs", "encoder_gflops", "palette", "plot_dense_predictions"]
