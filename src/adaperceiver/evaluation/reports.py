"""Reports: the sweep's Pareto plot and markdown table, and pictures of dense predictions.

Dense predictions: image | ground truth | prediction at a small and at the full configuration.
``plot_dense_predictions(model, images, targets, path)`` writes one PNG (a matplotlib ``Figure``; pyplot's global state is not touched)
with one row per image. Segmentation maps use a fixed palette (ignored pixels black); depth maps
share one colour scale per row (pixels without ground truth black). Each prediction column is
titled with its configuration (tokens/depth/width) and encoder GFLOPs; each cell with its
per-image mIoU or AbsRel.

Command line: ``adaperceiver dense-visualize --model RUN_DIR --data fashion_mnist_seg --out pic.png``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..models.setting import Setting
from ..models.util import eval_mode, module_device
from .cost import measure_gflops
from .metrics import DepthMetric, SegmentationMetric

Config = Setting


def _matplotlib():
    """matplotlib, or a clear ImportError: plots are an optional extra."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401  (Figure, used without pyplot)
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'adaperceiver[plot]'") from None
    return matplotlib


def new_figure(**kwargs: Any):
    """A ``matplotlib.figure.Figure`` not registered with pyplot: no global backend switch, nothing
    to close, safe in notebooks and threads. Save it with ``fig.savefig(path)``."""
    return _matplotlib().figure.Figure(**kwargs)


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours: class 0 dark grey, the rest well separated hues."""
    matplotlib = _matplotlib()

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
    """A small configuration (fewest tokens, half the blocks, narrowest width) and the full one; a model with
    one setting (a plain-ViT baseline) has just that."""
    settings = [tuple(c) for c in model.configurations()]
    if len(settings) == 1:
        return settings
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
    return measure_gflops(getattr(model, "backbone", model), config, img_size=image_hw)


@torch.no_grad()
def plot_dense_predictions(model: nn.Module, images: Tensor, targets: Tensor, path: str | Path,
                           configs: Sequence[Config] | None = None, class_names: Sequence[str] | None = None,
                           title: str | None = None) -> Path:
    """Write ``path``: per image, the input, the ground truth and the prediction at each of ``configs``."""
    matplotlib = _matplotlib()

    task = getattr(model, "task", None)
    if task not in ("segmentation", "depth"):
        raise ValueError(f"expected a SegmentationModel or DepthModel, got {type(model).__name__}")
    configs = list(configs or default_configs(model))
    device = module_device(model)
    with eval_mode(model):
        preds = [model(images.to(device), tokens=t, depth=d, width=w).cpu() for t, d, w in configs]
    gflops = [encoder_gflops(model, c, tuple(images.shape[-2:])) for c in configs]
    n, cols = images.shape[0], 2 + len(configs)
    fig = new_figure(figsize=(2.3 * cols, 2.3 * n + 0.6))
    axes = fig.subplots(n, cols, squeeze=False)
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
    return save_figure(fig, path, dpi=110)


# --------------------------------------------------------------------------------------------------
# tables
def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Rows as CSV: the columns of every row in first-seen order, floats to 6 significant digits."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


# --------------------------------------------------------------------------------------------------
# sweep reports
def plot_pareto(rows: Sequence[Mapping[str, Any]], path: str | Path, primary: str, higher_is_better: bool = True,
                latency_batch_size: int | None = 1, baselines: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Two panels, primary metric vs GFLOPs and vs measured latency: every configuration faint,
    the Pareto front as a line, static baselines with their own markers and labels."""
    matplotlib = _matplotlib()
    panels = [("gflops", "GFLOPs per image", "pareto_gflops", "gflops")]
    if latency_batch_size is not None:
        b = latency_batch_size
        panels.append((f"latency_ms_b{b}", f"latency (ms per batch of {b}, median)", f"pareto_latency_b{b}", "latency_ms"))
    fig = new_figure(figsize=(6 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    widths = sorted({r["width"] for r in rows})
    colours = matplotlib.colormaps["viridis"]([i / max(1, len(widths) - 1) for i in range(len(widths))])
    markers = ["s", "^", "D", "v", "P", "X", "*", "h"]
    for ax, (key, label, flag, base_key) in zip(axes[0], panels):
        for w, col in zip(widths, colours):
            pts = [r for r in rows if r["width"] == w]
            ax.scatter([r[key] for r in pts], [r[primary] for r in pts], s=12, alpha=0.3, color=col,
                       label=f"width {w}")
        front = sorted((r for r in rows if r.get(flag)), key=lambda r: r[key])
        ax.plot([r[key] for r in front], [r[primary] for r in front], "-o", color="black", ms=4, lw=1.2,
                label="AdaPerceiver Pareto front")
        for r in front:
            ax.annotate(f"{r['tokens']}/{r['depth']}/{r['width']}", (r[key], r[primary]), fontsize=6,
                        xytext=(3, -8), textcoords="offset points")
        for i, bl in enumerate(baselines or ()):
            if bl.get(base_key) is None or bl.get(primary) is None:
                continue
            ax.scatter([bl[base_key]], [bl[primary]], marker=markers[i % len(markers)], s=60, color=f"C{(i + 1) % 10}",
                       edgecolors="black", zorder=5, label=bl.get("name", f"baseline {i}"))
        ax.set_xlabel(label)
        ax.set_ylabel(f"{primary} ({'higher' if higher_is_better else 'lower'} is better)")
        ax.grid(alpha=0.3)
    # one legend below the panels: inside an axis it hid the baselines that sit in its corner
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(handles)), fontsize=7, frameon=False)
    fig.suptitle("configuration sweep (labels: tokens/depth/width)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * ((len(handles) - 1) // 5), 1, 1))
    return save_figure(fig, path, dpi=120)


def format_table(rows: Sequence[Mapping[str, Any]], batch_sizes: Sequence[int] = (), only_front: bool = True) -> str:
    """A markdown table of the sweep (by default only the GFLOPs-Pareto rows)."""
    if not rows:
        return ""
    fixed = {"tokens", "depth", "width", "hidden", "gflops", "encoder_gflops", "params"}
    metric_keys = [k for k in rows[0] if k not in fixed and not k.startswith(("latency_", "throughput_", "pareto_"))]
    cols = ["tokens", "depth", "width", *metric_keys, "gflops", "params"]
    cols += [f"latency_ms_b{b}" for b in batch_sizes] + [f"throughput_b{b}" for b in batch_sizes]
    sel = [r for r in rows if r.get("pareto_gflops")] if only_front else list(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(sel, key=lambda r: r["gflops"]):
        cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["colorize_labels", "default_configs", "encoder_gflops", "format_table", "palette", "plot_dense_predictions",
           "plot_pareto", "write_csv"]
