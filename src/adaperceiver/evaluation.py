"""Configuration sweeps: metric, FLOPs, latency and active parameters of every (tokens, depth, width).

One trained AdaPerceiver is evaluated over its whole grid (``cfg.trained_grans`` x depths ``1..L`` x
``cfg.widths``). The metric of every token count and depth at one width comes from a single
``forward_anytime`` pass per batch, so a sweep costs ``len(widths)`` passes over the data, not one
per configuration. Cost is measured, not estimated: FLOPs with ``torch.utils.flop_counter``
(:func:`adaperceiver.flops.count_flops`), latency with :func:`adaperceiver.timing.time_call` on the
model alone (eval mode, no_grad, inputs already on the device, stated batch sizes).

Metrics are pluggable. An accumulator has ``update(pred, target)`` and ``compute() -> dict``, and
says which key is primary and whether higher is better; :func:`register_metric` adds a factory under
a name. This module registers ``"classification"`` (top-1, and top-5 when there are more than five
classes); other modules register their own (``adaperceiver.metrics`` is imported on demand).

Helpers reused elsewhere (names are stable): :func:`pareto_front`, :func:`active_parameters`,
:func:`measure_latency`, :func:`run_sweep`.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .flops import count_flops
from .timing import Timing, time_call

# modules that may register metrics; imported the first time an unknown metric name is asked for
METRIC_MODULES: list[str] = ["adaperceiver.metrics"]


# --------------------------------------------------------------------------------------------------
# metrics
@runtime_checkable
class MetricAccumulator(Protocol):
    """Accumulates one configuration's predictions over a dataset.

    ``pred`` is exactly what ``model(x, tokens, depth, width)`` returns for the batch and
    ``target`` what the loader yields next to ``x``. ``primary`` names the key of :meth:`compute`
    that the Pareto front is built on; ``higher_is_better`` says which way it improves.
    """

    primary: str
    higher_is_better: bool

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...


MetricFactory = Callable[..., MetricAccumulator]  # factory(model, **kwargs) -> accumulator
_METRICS: dict[str, MetricFactory] = {}


def register_metric(name: str, factory: MetricFactory, overwrite: bool = False) -> None:
    """Make ``run_sweep(..., metric=name)`` build accumulators with ``factory(model, **metric_kwargs)``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    if name in _METRICS and not overwrite and _METRICS[name] is not factory:
        raise ValueError(f"metric {name!r} is already registered (pass overwrite=True to replace it)")
    _METRICS[name] = factory


def _import_metric_modules() -> None:
    for mod in METRIC_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # the module exists but one of its imports is missing: say so
                raise


def list_metrics() -> list[str]:
    _import_metric_modules()
    return sorted(_METRICS)


def get_metric(name: str) -> MetricFactory:
    """The factory registered under ``name``; unknown names list the known ones."""
    if name not in _METRICS:
        _import_metric_modules()
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {sorted(_METRICS)}")
    return _METRICS[name]


class ClassificationAccuracy:
    """Top-1 (and top-5 when there are more than five classes) accuracy in percent."""

    primary = "acc1"
    higher_is_better = True

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes
        self.count = 0
        self.correct1 = 0
        self.correct5 = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.dim() != 2 or target.shape[0] != pred.shape[0]:
            raise ValueError(f"classification metric expects logits (B, classes) and labels (B,), "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        target = target.to(pred.device).long()
        k = min(5, pred.shape[1])
        top = pred.topk(k, dim=1).indices
        hit = top == target.view(-1, 1)
        self.correct1 += int(hit[:, 0].sum())
        self.correct5 += int(hit.any(dim=1).sum())
        self.count += pred.shape[0]
        if self.num_classes is None:
            self.num_classes = pred.shape[1]

    def compute(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("no samples were seen")
        out = {"acc1": 100.0 * self.correct1 / self.count}
        if (self.num_classes or 0) > 5:
            out["acc5"] = 100.0 * self.correct5 / self.count
        return out


def _classification_factory(model: nn.Module, **kwargs: Any) -> ClassificationAccuracy:
    cfg = getattr(model, "cfg", None)
    return ClassificationAccuracy(kwargs.get("num_classes", getattr(cfg, "num_classes", None)))


register_metric("classification", _classification_factory)


# --------------------------------------------------------------------------------------------------
# Pareto front, parameters, latency
def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[bool]:
    """Flag the Pareto-optimal points of ``(cost, value)`` pairs (lower cost is better).

    A point is on the front unless another point costs no more and is at least as good, with one
    of the two strictly better. Exact duplicates of a front point are all on the front.
    """
    pts = [(float(c), float(v) if higher_is_better else -float(v)) for c, v in points]
    flags = []
    for i, (c, v) in enumerate(pts):
        dominated = any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for j, (c2, v2) in enumerate(pts) if j != i)
        flags.append(not dominated)
    return flags


def _mlp_units(mlp: nn.Module) -> int:
    """Parameters that one FFN hidden unit owns: a row of fc1 (+ bias) and a column of fc2."""
    return mlp.fc1.in_features + (1 if mlp.fc1.bias is not None else 0) + mlp.fc2.out_features


def active_parameters(model: nn.Module, tokens: int | None, depth: int | None, width: int | None) -> int:
    """Parameters used by ``model(x, tokens, depth, width)``.

    Blocks past ``depth`` and FFN hidden units past ``int(width * ffn_ratio)`` are not counted;
    the token count changes no parameter (latents are copies of one learned vector) but is checked.
    """
    model.resolve_tokens(tokens)
    d = model.resolve_depth(depth)
    hidden, _ = model.resolve_width(width, 1)
    total = sum(p.numel() for p in model.parameters())
    for i, blk in enumerate(model.blocks):
        if i >= d:
            total -= sum(p.numel() for p in blk.parameters())
        elif hidden is not None and hidden < blk.mlp.hidden_dim:
            total -= (blk.mlp.hidden_dim - hidden) * _mlp_units(blk.mlp)
    return total


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _image_shape(model: nn.Module, img_size: int | Sequence[int] | None) -> tuple[int, int, int]:
    cfg = model.cfg
    if img_size is None:
        h = w = cfg.img_size
    elif isinstance(img_size, int):
        h = w = img_size
    else:
        h, w = (int(s) for s in img_size)
    return cfg.in_chans, h, w


def measure_latency(model: nn.Module, tokens: int | None, depth: int | None, width: int | None, batch_size: int,
                    img_size: int | Sequence[int] | None = None, device: torch.device | str | None = None, *,
                    warmup: int = 3, repeats: int = 10, min_seconds: float = 0.0) -> Timing:
    """Median latency of ``model(x, tokens, depth, width)`` on a ready random batch.

    The model alone is timed, in eval mode, under no_grad, with the input already on ``device``
    (default: the model's); the model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    dtype = next(model.parameters()).dtype
    x = torch.randn(batch_size, *_image_shape(model, img_size), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return time_call(lambda: model(x, tokens=tokens, depth=depth, width=width), batch_size,
                             warmup=warmup, repeats=repeats, device=device, min_seconds=min_seconds)
    finally:
        model.train(was_training)


def measure_gflops(model: nn.Module, tokens: int | None, depth: int | None, width: int | None,
                   img_size: int | Sequence[int] | None = None, device: torch.device | str | None = None) -> float:
    """GFLOPs per image of one configuration (``torch.utils.flop_counter``, batch of one)."""
    device = torch.device(device) if device is not None else _model_device(model)
    x = torch.zeros(1, *_image_shape(model, img_size), device=device, dtype=next(model.parameters()).dtype)
    was_training = model.training
    model.eval()
    try:
        return count_flops(model, x, tokens=tokens, depth=depth, width=width) / 1e9
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------------
# the sweep
@dataclass(frozen=True)
class SweepConfig:
    tokens: int
    depth: int
    width: int


def grid(model: nn.Module) -> list[SweepConfig]:
    """The trained configuration grid: granularities x depths 1..L x widths."""
    cfg = model.cfg
    return [SweepConfig(t, d, w) for t in cfg.trained_grans for d in range(1, len(model.blocks) + 1)
            for w in cfg.widths]


def _progress(it: Iterable, enabled: bool, **kw: Any) -> Iterable:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, **kw)


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, Mapping):
        return batch["image"], batch["label"]
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("the loader must yield (images, targets) pairs or dicts with 'image' and 'label'")


@torch.no_grad()
def evaluate_grid(model: nn.Module, loader: Iterable, metric: str = "classification", *,
                  metric_kwargs: dict[str, Any] | None = None, device: torch.device | str | None = None,
                  progress: bool = True) -> tuple[dict[SweepConfig, dict[str, float]], MetricAccumulator, tuple[int, ...], int]:
    """Metric of every grid configuration, one ``forward_anytime`` pass per batch and width.

    Returns ``(results, an accumulator (for primary / direction), image shape (C, H, W), images seen)``.
    """
    factory = get_metric(metric)
    device = torch.device(device) if device is not None else _model_device(model)
    cfg = model.cfg
    grans = cfg.trained_grans
    depths = tuple(range(1, len(model.blocks) + 1))
    accs = {c: factory(model, **(metric_kwargs or {})) for c in grid(model)}
    was_training = model.training
    model.eval()
    seen, shape = 0, None
    try:
        for w in cfg.widths:
            n_w = 0
            for batch in _progress(loader, progress, desc=f"sweep width {w}", leave=False):
                x, y = _split_batch(batch)
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                out = model.forward_anytime(x, width=w, token_counts=grans, depths=depths)
                for i, d in enumerate(out.depths):
                    for j, t in enumerate(out.tokens):
                        accs[SweepConfig(t, d, w)].update(out.outputs[i, j], y)
                n_w += x.shape[0]
                shape = tuple(x.shape[1:])
            if not n_w:
                raise ValueError("the loader yielded no batches: nothing to evaluate")
            seen = n_w
    finally:
        model.train(was_training)
    results = {c: a.compute() for c, a in accs.items()}
    return results, next(iter(accs.values())), shape, seen


def machine_info() -> dict[str, Any]:
    """Where a measurement ran: platform, processor, CPU count, torch version and threads."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}




def run_sweep(model: nn.Module, loader: Iterable, out_dir: str | Path | None, *, metric: str = "classification",
              baselines: Sequence[Mapping[str, Any]] | None = None, latency_batch_sizes: Sequence[int] = (1, 64),
              progress: bool = True, device: torch.device | str | None = None,
              metric_kwargs: dict[str, Any] | None = None, latency_warmup: int = 3,
              latency_repeats: int = 10) -> list[dict[str, Any]]:
    """Evaluate ``model`` at every (tokens, depth, width) of its grid; write CSV, JSON and a Pareto plot.

    Each row has ``tokens, depth, width, hidden`` (FFN units), the metric's values, ``gflops``
    (per image), ``params`` (active), for every batch size ``b`` ``latency_ms_b{b}`` (median per
    batch) and ``throughput_b{b}`` (images/s), and the Pareto flags ``pareto_gflops`` and
    ``pareto_latency_b{b}`` (primary metric vs that cost). ``out_dir=None`` writes nothing.
    """
    bss = tuple(int(b) for b in latency_batch_sizes)
    if any(b < 1 for b in bss):
        raise ValueError(f"latency batch sizes must be >= 1, got {list(latency_batch_sizes)}")
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    results, acc, shape, seen = evaluate_grid(model, loader, metric, metric_kwargs=metric_kwargs, device=device,
                                              progress=progress)
    img = shape[1:] if shape is not None and len(shape) == 3 else None
    rows: list[dict[str, Any]] = []
    for c in _progress(grid(model), progress, desc="cost (FLOPs, latency)", leave=False):
        hidden, _ = model.resolve_width(c.width, 1)
        row: dict[str, Any] = {"tokens": c.tokens, "depth": c.depth, "width": c.width,
                               "hidden": hidden if hidden is not None else model.cfg.mlp_hidden}
        row.update(results[c])
        row["gflops"] = measure_gflops(model, c.tokens, c.depth, c.width, img, device)
        if hasattr(model, "backbone"):  # task models (segmentation / depth): the encoder's share without the head
            row["encoder_gflops"] = measure_gflops(model.backbone, c.tokens, c.depth, c.width, img, device)
        row["params"] = active_parameters(model, c.tokens, c.depth, c.width)
        for b in bss:
            t = measure_latency(model, c.tokens, c.depth, c.width, b, img, device,
                                warmup=latency_warmup, repeats=latency_repeats)
            row[f"latency_ms_b{b}"] = t.median_ms
            row[f"throughput_b{b}"] = t.throughput
        rows.append(row)
    mark_pareto(rows, acc.primary, acc.higher_is_better, bss)
    if out_dir is not None:
        meta = {"metric": metric, "primary": acc.primary, "higher_is_better": acc.higher_is_better,
                "num_images": seen, "image_shape": list(shape) if shape else None,
                "latency_batch_sizes": list(bss), "latency": {"warmup": latency_warmup, "repeats": latency_repeats,
                                                              "statistic": "median ms per batch"},
                "device": str(device), "machine": machine_info(), "model": model.cfg.to_dict(),
                "baselines": [dict(b) for b in baselines or ()]}
        write_sweep(rows, out_dir, meta)
        plot_pareto(rows, Path(out_dir) / "pareto.png", acc.primary, acc.higher_is_better,
                    latency_batch_size=bss[0] if bss else None, baselines=baselines)
    return rows


def mark_pareto(rows: list[dict[str, Any]], primary: str, higher_is_better: bool, batch_sizes: Sequence[int]) -> None:
    """Add ``pareto_gflops`` and ``pareto_latency_b{b}`` flags to sweep rows, in place."""
    costs = {"pareto_gflops": "gflops", **{f"pareto_latency_b{b}": f"latency_ms_b{b}" for b in batch_sizes}}
    for flag, key in costs.items():
        front = pareto_front([(r[key], r[primary]) for r in rows], higher_is_better)
        for r, f in zip(rows, front):
            r[flag] = f


def write_sweep(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``sweep.csv`` (rows) and ``sweep.json`` (``meta`` + rows)."""
    if not rows:
        raise ValueError("no sweep rows to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    csv_path, json_path = out / "sweep.csv", out / "sweep.json"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    json_path.write_text(json.dumps({**meta, "rows": list(rows)}, indent=1) + "\n")
    return csv_path, json_path


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: str | Path, primary: str, higher_is_better: bool = True,
                latency_batch_size: int | None = 1, baselines: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Two panels, primary metric vs GFLOPs and vs measured latency: every configuration faint,
    the Pareto front as a line, static baselines with their own markers and labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("gflops", "GFLOPs per image", "pareto_gflops", "gflops")]
    if latency_batch_size is not None:
        b = latency_batch_size
        panels.append((f"latency_ms_b{b}", f"latency (ms per batch of {b}, median)", f"pareto_latency_b{b}", "latency_ms"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    widths = sorted({r["width"] for r in rows})
    colours = plt.get_cmap("viridis")([i / max(1, len(widths) - 1) for i in range(len(widths))])
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
                       edgecolors="black", zorder=5, label=f"static: {bl.get('name', f'baseline {i}')}")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{primary} ({'higher' if higher_is_better else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if higher_is_better else "upper right")
    fig.suptitle("configuration sweep (labels: tokens/depth/width)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# command line
def _parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--latency-batch-sizes must be comma-separated ints like 1,64, got {text!r}") from None
    if any(b < 1 for b in sizes):
        raise ValueError(f"--latency-batch-sizes must be >= 1, got {text!r}")
    return sizes


def load_dataset(spec: str, split: str):
    """``fashion-mnist``, ``digits`` or ``imagefolder:PATH`` via :func:`adaperceiver.data.get_dataset`."""
    from .data import get_dataset

    name, _, root = spec.partition(":")
    return get_dataset(name, split, root=root or None)


def register_cli(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="evaluate a trained model at every (tokens, depth, width): metric, GFLOPs, latency, Pareto plot",
        description="Evaluate a trained model over its whole configuration grid (token granularities x depths "
        "x widths) and write sweep.csv, sweep.json and pareto.png. Accuracy for all tokens and depths at one "
        "width comes from one anytime pass per batch; GFLOPs are counted with torch.utils.flop_counter; latency "
        "is the median over repeats of the model alone at the stated batch sizes.",
    )
    p.add_argument("--model", required=True, help="model / run directory (loaded with adaperceiver.from_pretrained)")
    p.add_argument("--data", default="fashion-mnist",
                   help="dataset: fashion-mnist, digits or imagefolder:PATH (default: fashion-mnist)")
    p.add_argument("--split", default="test", help="dataset split to evaluate (default: test)")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/sweep)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    p.add_argument("--latency-batch-sizes", default="1,64",
                   help="comma-separated batch sizes to time every configuration at (default: 1,64)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--metric", default=None,
                   help="metric name (default: the model's task: classification, segmentation or depth)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cli_sweep)


def _cli_sweep(args) -> int:
    from torch.utils.data import DataLoader, Subset

    from .checkpoint import from_pretrained

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    sizes = _parse_batch_sizes(args.latency_batch_sizes)
    model = from_pretrained(args.model, map_location=args.device or "cpu")
    data = load_dataset(args.data, args.split)
    if args.limit is not None:
        data = Subset(data, range(min(args.limit, len(data))))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    out = Path(args.out) if args.out else Path(args.model) / "sweep"
    if args.metric is None:  # the task the model was saved as
        from .checkpoint import load_meta

        arch = load_meta(args.model).get("architecture")
        args.metric = arch if arch in ("segmentation", "depth") else "classification"
    rows = run_sweep(model, loader, out, metric=args.metric, latency_batch_sizes=sizes,
                     progress=not args.no_progress, device=args.device)
    print(format_table(rows, sizes))
    print(f"wrote {out / 'sweep.csv'}, {out / 'sweep.json'}, {out / 'pareto.png'}")
    return 0


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


__all__ = [
    "METRIC_MODULES", "ClassificationAccuracy", "MetricAccumulator", "SweepConfig", "active_parameters",
    "evaluate_grid", "format_table", "get_metric", "grid", "list_metrics", "machine_info", "mark_pareto", "measure_gflops",
    "measure_latency", "pareto_front", "plot_pareto", "register_metric", "run_sweep", "write_sweep",
]
