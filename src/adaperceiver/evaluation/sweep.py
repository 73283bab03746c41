"""Configuration sweeps: metric, FLOPs, latency and active parameters of every (tokens, depth, width).

One trained AdaPerceiver is evaluated over its whole grid (``cfg.trained_grans`` x depths ``1..L`` x
``cfg.widths``). The metric of every token count and depth at one width comes from a single
``forward_anytime`` pass per batch, so a sweep costs ``len(widths)`` passes over the data, not one
per configuration. Cost is measured, not estimated: FLOPs with ``torch.utils.flop_counter``
(:func:`adaperceiver.evaluation.cost.count_flops`), latency with :func:`adaperceiver.evaluation.cost.time_call` on the
model alone (eval mode, no_grad, inputs already on the device, stated batch sizes).

Metrics are pluggable (:mod:`adaperceiver.evaluation.metrics`): an accumulator has
``update(pred, target)`` and ``compute() -> dict`` and says which key is primary and whether higher
is better; :func:`~adaperceiver.evaluation.metrics.register_metric` adds a factory under a name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import tensors_digest
from ..models.heads import DenseTaskModel
from ..models.protocol import check_adaptive
from ..models.setting import Setting
from ..models.util import eval_mode, module_device
from .cost import active_parameters, machine_info, measure_gflops, measure_latency
from .metrics import MetricAccumulator, get_metric
from .reports import plot_pareto, write_csv


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



# --------------------------------------------------------------------------------------------------
# the sweep
SweepConfig = Setting  # the name sweeps used before settings had a type of their own


def grid(model: nn.Module) -> list[Setting]:
    """The trained settings (``model.configurations()``: granularities x depths 1..L x widths)."""
    return [Setting.of(c) for c in model.configurations()]


def _check_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The model's device; a ``device`` given must be that one (the sweep never moves the caller's model)."""
    own = module_device(model)
    if device is None:
        return own
    want = torch.device(device)
    if want.type != own.type or (want.index is not None and own.index is not None and want.index != own.index):
        raise ValueError(f"the model is on {own}, not {want}: move it first (model.to({str(want)!r})) or leave "
                         f"device unset")
    return own


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
                  progress: bool = True, anytime: Any = None,
                  ) -> tuple[dict[Setting, dict[str, float]], MetricAccumulator, tuple[int, ...], int]:
    """Metric of every grid setting, one ``forward_anytime`` pass per batch and width (every axis but
    tokens and depth).

    Returns ``(results, an accumulator (for primary / direction), image shape (C, H, W), images seen)``.
    ``anytime`` replaces ``model.forward_anytime`` (e.g. that of ``model.for_inference(dtype)``).
    """
    check_adaptive(model, "a sweep")
    anytime = anytime or model.forward_anytime
    factory = get_metric(metric)
    device = _check_device(model, device)
    configs = grid(model)
    grans = tuple(sorted({c.tokens for c in configs}))
    depths = tuple(sorted({c.depth for c in configs}))
    accs = {c: factory(model, **(metric_kwargs or {})) for c in configs}
    seen, shape = 0, None
    rest_axes = Setting._fields[2:]  # one anytime pass reads out every (tokens, depth) at one value of the rest
    with eval_mode(model):
        for rest in sorted({tuple(c[2:]) for c in configs}):
            n_w = 0
            kw = dict(zip(rest_axes, rest))
            for batch in _progress(loader, progress, desc=f"sweep {kw}", leave=False):
                x, y = _split_batch(batch)
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                out = anytime(x, **kw, token_counts=grans, depths=depths)
                for i, d in enumerate(out.depths):
                    for j, t in enumerate(out.tokens):
                        accs[Setting(t, d, *rest)].update(out.outputs[i, j], y)
                n_w += x.shape[0]
                shape = tuple(x.shape[1:])
            if not n_w:
                raise ValueError("the loader yielded no batches: nothing to evaluate")
            seen = n_w
    results = {c: a.compute() for c, a in accs.items()}
    return results, next(iter(accs.values())), shape, seen


def run_sweep(model: nn.Module, loader: Iterable, out_dir: str | Path | None, *, metric: str = "classification",
              baselines: Sequence[Mapping[str, Any]] | None = None, latency_batch_sizes: Sequence[int] = (1, 64),
              progress: bool = True, device: torch.device | str | None = None,
              metric_kwargs: dict[str, Any] | None = None, latency_warmup: int = 3,
              latency_repeats: int = 10, dtype: torch.dtype | str | None = None,
              compile: bool = False) -> list[dict[str, Any]]:
    """Evaluate ``model`` at every (tokens, depth, width) of its grid; write CSV, JSON and a Pareto plot.

    Each row has ``tokens, depth, width, hidden`` (FFN units), the metric's values, ``gflops``
    (per image), ``params`` (active), for every batch size ``b`` ``latency_ms_b{b}`` (median per
    batch) and ``throughput_b{b}`` (images/s), and the Pareto flags ``pareto_gflops`` and
    ``pareto_latency_b{b}`` (primary metric vs that cost). ``out_dir=None`` writes nothing.

    With ``dtype`` (e.g. ``torch.bfloat16``) and/or ``compile``, the metric and the latency are those
    of ``model.for_inference(dtype, compile)``: the metric computed in that dtype, the latency of each
    configuration's slim (compiled) module; GFLOPs and parameters are the model's.
    """
    check_adaptive(model, "a sweep")
    bss = tuple(int(b) for b in latency_batch_sizes)
    if any(b < 1 for b in bss):
        raise ValueError(f"latency batch sizes must be >= 1, got {list(latency_batch_sizes)}")
    device = _check_device(model, device)
    fast = model.for_inference(dtype, compile) if dtype is not None or compile else None
    timed = fast if fast is not None else model
    results, acc, shape, seen = evaluate_grid(model, loader, metric, metric_kwargs=metric_kwargs, device=device,
                                              progress=progress, anytime=fast.forward_anytime if fast else None)
    img = shape[1:] if shape is not None and len(shape) == 3 else None
    rows: list[dict[str, Any]] = []
    for c in _progress(grid(model), progress, desc="cost (FLOPs, latency)", leave=False):
        _, _, hidden = model.resolve_configuration(c.tokens, c.depth, c.width)
        row: dict[str, Any] = {**c.as_dict(), "hidden": hidden if hidden is not None else model.cfg.mlp_hidden}
        row.update(results[c])
        row["gflops"] = measure_gflops(model, c, img, device)
        if isinstance(model, DenseTaskModel):  # segmentation / depth: the encoder's share without the head
            row["encoder_gflops"] = measure_gflops(model.backbone, c, img, device)
        row["params"] = active_parameters(model, c)
        for b in bss:
            t = measure_latency(timed, c, b, img, device,
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
                "model_sha256": tensors_digest(model.state_dict()),  # which weights these rows describe
                "inference": {"dtype": str(fast.dtype) if fast else "torch.float32", "compile": bool(compile)},
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
    csv_path, json_path = write_csv(rows, out / "sweep.csv"), out / "sweep.json"
    json_path.write_text(json.dumps({**meta, "rows": list(rows)}, indent=1) + "\n")
    return csv_path, json_path


__all__ = ["SweepConfig", "evaluate_grid", "grid", "mark_pareto", "pareto_front", "run_sweep", "write_sweep"]
