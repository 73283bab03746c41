"""Adaptive sub-configuration vs a static model of exactly that shape: is adaptivity free at inference?

For each axis (tokens, depth, width), a few combined sub-configurations and the full configuration
(a control: the ratio there should be ~1), this script

1. cuts the static model out with :func:`adaperceiver.models.slim` (blocks past ``depth`` dropped,
   FFN hidden units past ``int(width * ffn_ratio)`` sliced away) -- same math, nothing chosen at
   run time -- and checks that both give the same output;
2. times ``adaptive(x, tokens, depth, width)`` and ``static(x)`` on the same ready input, eval
   mode, no_grad, with the library's timer (:func:`adaperceiver.evaluation.cost.time_call`) in
   interleaved rounds (A then B, B then A, ...) so that machine noise hits both alike, at each
   stated batch size;
3. prints the throughput ratio adaptive / static (median of the per-round ratios; target >= 0.95).

Run it alone on the machine (timings are polluted by other work), e.g.::

    flock /tmp/adaperceiver-heavy.lock python benchmarks/bench_axes.py --preset adaperceiver_tiny \
        --batch-sizes 1,64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass

import torch

from adaperceiver import AdaPerceiver, build_model, preset_config
from adaperceiver.evaluation.cost import time_call
from adaperceiver.models import slim


@dataclass
class Result:
    preset: str
    axis: str
    tokens: int
    depth: int
    width: int
    batch_size: int
    adaptive_ms: float
    static_ms: float
    ratio: float  # throughput adaptive / static = static time / adaptive time (median over rounds)
    ratio_iqr: float
    ratio_min: float  # static fastest call / adaptive fastest call
    rounds: int
    calls: int  # timed calls per model per round
    load: float  # 1-minute load average after the measurement (> threads: other work was running)


def sub_configs(model: AdaPerceiver) -> list[tuple[str, int, int, int]]:
    """(axis, tokens, depth, width): full, one axis reduced at a time, and combined reductions."""
    cfg = model.cfg
    grans, widths, full_d = cfg.trained_grans, cfg.widths, model.num_blocks
    t_full, w_full = cfg.num_latents, cfg.embed_dim
    t_small, t_mid = grans[0], grans[len(grans) // 2 - 1] if len(grans) > 2 else grans[0]
    return [
        ("full", t_full, full_d, w_full),
        ("tokens", t_small, full_d, w_full),
        ("tokens", t_mid, full_d, w_full),
        ("depth", t_full, max(1, full_d // 2), w_full),
        ("width", t_full, full_d, widths[0]),
        ("width", t_full, full_d, widths[len(widths) // 2]),
        ("combined", t_mid, max(1, full_d // 2), widths[len(widths) // 2]),
        ("combined", t_small, max(1, full_d // 4), widths[0]),
    ]


def interleaved_ratio(adaptive, static, batch_size: int, rounds: int, calls: int) -> dict[str, float]:
    """Time ``adaptive()`` and ``static()`` with the library's timer, alternating which goes first each round.

    Returns the median times, the median of the per-round throughput ratios (static time /
    adaptive time of that round: load that comes and goes hits both sides of a round alike), its
    inter-quartile range, and the ratio of the fastest calls (a second, contention-robust view).
    """
    a_all, s_all, ratios = [], [], []
    for r in range(rounds):
        order = (adaptive, static) if r % 2 == 0 else (static, adaptive)
        t = {fn: time_call(fn, batch_size, warmup=1 if r < 2 else 0, repeats=calls) for fn in order}
        ratios.append(t[static].median_ms / t[adaptive].median_ms)
        a_all.append(t[adaptive])
        s_all.append(t[static])
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [min(ratios), 0, max(ratios)]
    return {"adaptive_ms": statistics.median(t.median_ms for t in a_all),
            "static_ms": statistics.median(t.median_ms for t in s_all), "ratio": statistics.median(ratios),
            "ratio_iqr": q[2] - q[0], "ratio_min": min(t.min_ms for t in s_all) / min(t.min_ms for t in a_all)}


@torch.no_grad()
def bench(preset: str, batch_sizes: list[int], rounds: int, calls: int, img_size: int | None,
          axes: set[str] | None) -> list[Result]:
    overrides = {"img_size": img_size} if img_size else {}
    model = build_model(preset_config(preset, **overrides)).eval()
    cfg = model.cfg
    results = []
    for axis, t, d, w in sub_configs(model):
        if axes and axis not in axes:
            continue
        static = slim(model, t, d, w)  # the same math with the unused weights physically removed
        for b in batch_sizes:
            x = torch.randn(b, cfg.in_chans, cfg.img_size, cfg.img_size)
            torch.testing.assert_close(model(x, tokens=t, depth=d, width=w), static(x), atol=1e-4, rtol=1e-4)
            m = interleaved_ratio(lambda x=x, t=t, d=d, w=w: model(x, tokens=t, depth=d, width=w),
                                  lambda x=x, static=static: static(x), b, rounds, calls)
            res = Result(preset, axis, t, d, w, b, rounds=rounds, calls=calls, load=os.getloadavg()[0], **m)
            results.append(res)
            print(f"{preset:18s} {axis:8s} t={t:<4d} d={d:<3d} w={w:<4d} batch={b:<3d} adaptive {res.adaptive_ms:9.3f} ms"
                  f"  static {res.static_ms:9.3f} ms  ratio {res.ratio:.3f} (IQR {res.ratio_iqr:.3f}, "
                  f"fastest-call ratio {res.ratio_min:.3f}; load {res.load:.1f})", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", help="model preset (repeatable; default adaperceiver_tiny)")
    p.add_argument("--img-size", type=int, default=None, help="override the preset's image size")
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes (default 1,64)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved A/B rounds (default 10)")
    p.add_argument("--calls", type=int, default=4, help="timed calls per model per round (default 4)")
    p.add_argument("--axes", default=None, help="only these axes, e.g. tokens,width (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    axes = set(args.axes.split(",")) if args.axes else None
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; rounds={args.rounds} calls/round={args.calls}")
    results = []
    for preset in args.preset or ["adaperceiver_tiny"]:
        results += bench(preset, sizes, args.rounds, args.calls, args.img_size, axes)
    worst = min(results, key=lambda r: r.ratio)
    print(f"worst ratio {worst.ratio:.3f} ({worst.preset} {worst.axis} batch {worst.batch_size})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
