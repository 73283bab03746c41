"""Where batch-1 time goes: the adaptive model at its cheapest and full settings beside the plain ViT.

Times batch-1 calls (fp32 eager, and the bf16 + compile fast path) and profiles the eager ones
(``torch.profiler``): operators launched per call and the operators that take the self time. Random
weights: time does not depend on them. Run under the benchmark lock::

    flock /work/heavy.lock python benchmarks/profile_b1.py --task count64
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from adaperceiver.evaluation.cost import measure_latency
from adaperceiver.models import create_model

TASKS = {"fmnist28": dict(img_size=28, patch_size=4), "count64": dict(img_size=64, patch_size=8)}


def profile_call(model, setting, calls: int = 50) -> dict:
    """Operators per batch-1 call and where their self time goes (fp32 eager)."""
    x = torch.randn(1, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size)
    kw = dict(zip(("tokens", "depth", "width"), setting)) if setting else {}
    with torch.no_grad():
        for _ in range(5):
            model(x, **kw)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(x, **kw)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    counts = Counter({e.key: e.count // calls for e in events})
    share = sorted(((e.key, e.self_cpu_time_total / total) for e in events), key=lambda kv: -kv[1])
    return {"aten_ops_per_call": sum(counts.values()), "top_self_time": [(k, round(v, 3)) for k, v in share[:6]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="count64")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    over = dict(TASKS[args.task], num_classes=10, in_chans=1)
    ada = create_model("adaperceiver_tiny", **over).eval()
    vit = create_model("vit_tiny", **over).eval()
    space = ada.space
    cheap, full = tuple(a[0] for a in space.axes), tuple(space.full)
    res = {"task": args.task, "load_avg": os.getloadavg()}
    for name, model, setting in (("adaptive cheapest", ada, cheap), ("adaptive full", ada, full), ("vit_tiny", vit, None)):
        r = profile_call(model, setting)
        r["latency_ms_fp32"] = measure_latency(model, setting, 1, repeats=60).median_ms
        fast = model.for_inference(torch.bfloat16, compile=True)
        r["latency_ms_bf16c"] = measure_latency(fast, setting, 1, repeats=60).median_ms
        res[name] = r
        print(f"{name} {setting}: {r['latency_ms_fp32']:.3f} ms fp32 eager, {r['latency_ms_bf16c']:.3f} ms bf16+compile; "
              f"{r['aten_ops_per_call']} aten ops per call; self time: "
              + ", ".join(f"{k[6:]} {v:.0%}" for k, v in r["top_self_time"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
