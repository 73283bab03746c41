"""``adaperceiver budget``: the most accurate configuration of a sweep within a latency or FLOPs budget."""

from __future__ import annotations

import torch

from ..adapt.budget import CACHE_NAME, select_configuration
from ..checkpoint import from_pretrained
from .common import add_device_option, add_inference_options, command_device


def register(sub) -> None:
    p = sub.add_parser(
        "budget",
        help="pick the most accurate configuration of a sweep that fits a latency or FLOPs budget on this machine",
        description="Measure (and cache next to the sweep) the latency of every configuration on this machine, "
        "then print the most accurate configuration within the budget.",
    )
    p.add_argument("--sweep", required=True, help="sweep.json / sweep.csv (or its directory) from 'adaperceiver sweep'")
    p.add_argument("--model", required=True, help="the model / run directory the sweep was made with")
    p.add_argument("--max-ms", type=float, default=None, help="latency budget: median ms per call at --batch-size")
    p.add_argument("--max-gflops", type=float, default=None, help="FLOPs budget per image")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--metric", default="acc1", help="sweep column to maximise")
    p.add_argument("--cache", default=None, help=f"latency cache file (default: {CACHE_NAME} next to the sweep)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads while measuring")
    add_inference_options(p)
    add_device_option(p)
    p.add_argument("--cached-only", action="store_true",
                   help="answer only from the latency cache: refuse, instead of measuring, when it holds no latencies "
                        "for this device, dtype, compile, batch size and torch version")
    p.set_defaults(func=_cli_budget)


def _cli_budget(args) -> int:
    if args.max_ms is None and args.max_gflops is None:
        raise ValueError("give --max-ms and/or --max-gflops")
    for flag, value in (("--max-ms", args.max_ms), ("--max-gflops", args.max_gflops)):
        if value is not None and not 0 < value < float("inf"):
            raise ValueError(f"{flag} must be a budget > 0, got {value}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    model = from_pretrained(args.model, map_location=command_device(args.device))
    if args.dtype or args.compile:  # latencies of the fast model (cached under their own key)
        model = model.for_inference(args.dtype, args.compile)
    row = select_configuration(args.sweep, model, args.max_ms, args.max_gflops, args.batch_size, metric=args.metric,
                               cache_path=args.cache, measure_missing=not args.cached_only)
    cols = [args.metric, "gflops", "latency_ms"]
    print(f"tokens={row['tokens']} depth={row['depth']} width={row['width']}  "
          + "  ".join(f"{c}={row[c]:.4g}" for c in cols if c in row)
          + (f"  (batch size {args.batch_size})" if "latency_ms" in row else ""))
    return 0
