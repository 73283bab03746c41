"""Fast inference modes against fp32 eager: milliseconds, speed-up, logit deviation, top-1 agreement.

For each configuration (tokens/depth/width) and batch size, every mode is timed in one interleaved
run (mode order reversed every other round, so load that comes and goes hits all modes alike) with
the one timer (``time_call``: warm-up, median, CUDA synchronise on CUDA). Modes:

* ``fp32``: the adaptive model, eager, float32 (``model(x, tokens, depth, width)``): the baseline;
* ``bf16``: ``model.for_inference(dtype=torch.bfloat16)``: the slim static configuration in bf16;
* ``autocast``: the slim static configuration in float32 under ``torch.autocast(bfloat16)``;
* ``compile-fp32`` / ``compile-bf16``: ``for_inference(dtype, compile=True)`` (inductor, frozen weights);
* ``compile-bf16-cppw``: the same with ``compile_options={"cpp_wrapper": True}`` (inductor's C++ wrapper
  calls the kernels instead of Python: less overhead per call);
* ``int8``: dynamic int8 quantisation (``torch.ao``) of the slim static configuration's Linear layers.

Accuracy against fp32: max |logit difference| and top-1 agreement on real test images for a trained
model (``--model RUN --data fashion_mnist``), on random images for random weights (``--preset``).

Run it alone on the machine (it times things), e.g.::

    flock /work/heavy.lock python benchmarks/bench_inference.py --preset adaperceiver_base \\
        --configs 32,6,416 --batch-sizes 1,8 --json base_32.json
    flock /work/heavy.lock python benchmarks/bench_inference.py --model runs/tiny --data fashion_mnist \\
        --batch-sizes 1,8,64 --json tiny.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from adaperceiver import create_model, from_pretrained
from adaperceiver.evaluation import machine_info, time_call

MODES = ("fp32", "bf16", "autocast", "compile-fp32", "compile-bf16", "compile-bf16-cppw", "int8")
PAPER_CONFIGS = "256,21,832;64,12,416;32,6,416"


def int8_dynamic(module: nn.Module) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(module), {nn.Linear}, dtype=torch.qint8).eval()


def build_mode(mode: str, model: nn.Module, cfg: tuple[int, int, int]) -> Callable[[Tensor], Tensor]:
    """``x (float32) -> float32 output`` of ``model`` at ``cfg`` in one mode."""
    t, d, w = cfg
    if mode == "fp32":
        return lambda x: model(x, tokens=t, depth=d, width=w)
    if mode in ("bf16", "compile-fp32", "compile-bf16", "compile-bf16-cppw"):
        dtype = torch.float32 if mode == "compile-fp32" else torch.bfloat16
        opts = {"cpp_wrapper": True} if mode.endswith("cppw") else None
        fast = model.for_inference(dtype=dtype, compile=mode.startswith("compile"), compile_options=opts)
        return lambda x: fast(x, tokens=t, depth=d, width=w)
    static = model.for_inference(dtype=torch.float32).configuration(t, d, w)
    if mode == "autocast":
        def run(x: Tensor) -> Tensor:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return static(x).float()
        return run
    if mode == "int8":
        q = int8_dynamic(static)
        return lambda x: q(x)
    raise ValueError(f"unknown mode {mode!r}; allowed: {list(MODES)}")


def eval_images(args, model, chunk: int) -> tuple[Tensor, str]:
    c = model.cfg
    if args.data:
        from adaperceiver.data import get_dataset

        ds = get_dataset(args.data, "val")
        n = min(args.eval_images, len(ds)) // chunk * chunk
        return torch.stack([ds[i][0] for i in range(n)]), f"first {n} test images of {args.data}"
    g = torch.Generator().manual_seed(0)
    n = max(chunk, args.eval_images // chunk * chunk)
    return torch.randn(n, c.in_chans, c.img_size, c.img_size, generator=g), f"{n} random images"


@torch.no_grad()
def agreement(fn: Callable[[Tensor], Tensor], ref_logits: Tensor, xs: Tensor, batch_size: int) -> tuple[float, float]:
    out = torch.cat([fn(c).float() for c in xs.split(batch_size)])
    return float((out - ref_logits).abs().max()), float((out.argmax(-1) == ref_logits.argmax(-1)).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="random-weight model of this preset (e.g. adaperceiver_base)")
    src.add_argument("--model", help="trained model / run directory")
    p.add_argument("--configs", default=None, help="TOKENS,DEPTH,WIDTH;... (default: the paper's three for "
                   "adaperceiver_base, else full, half and quarter)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--calls", type=int, default=3, help="timed calls per mode per round")
    p.add_argument("--data", default=None, help="dataset for the agreement check (e.g. fashion_mnist)")
    p.add_argument("--eval-images", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = (from_pretrained(args.model) if args.model else create_model(args.preset)).eval()
    full = (model.cfg.num_latents, model.num_blocks, model.cfg.embed_dim)
    if args.configs is None:
        args.configs = PAPER_CONFIGS if args.preset == "adaperceiver_base" else ";".join(
            f"{max(1, full[0] // k)},{max(1, full[1] // k)},{model.cfg.widths[0] if k > 1 else full[2]}" for k in (1, 2, 4))
    configs = [tuple(int(v) for v in c.split(",")) for c in args.configs.split(";")]
    modes = args.modes.split(",")
    if modes[0] != "fp32":
        modes = ["fp32"] + [m for m in modes if m != "fp32"]
    batch_sizes = [int(v) for v in args.batch_sizes.split(",")]
    chunk = max(batch_sizes)  # agreement runs at a timed batch size: no extra compilation
    xs, xs_desc = eval_images(args, model, chunk)
    rows = []
    for cfg in configs:
        t0 = time.time()
        fns = {m: build_mode(m, model, cfg) for m in modes}
        with torch.no_grad():
            ref = torch.cat([fns["fp32"](c) for c in xs.split(chunk)])
        acc = {m: agreement(fns[m], ref, xs, chunk) for m in modes}
        for b in batch_sizes:
            x = torch.randn(b, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size,
                            generator=torch.Generator().manual_seed(1))
            first = {}
            with torch.no_grad():
                for m in modes:  # build / compile at this batch size outside the timing
                    t1 = time.time()
                    fns[m](x)
                    first[m] = time.time() - t1
            per_round = {m: [] for m in modes}
            for r in range(args.rounds):
                for m in (modes if r % 2 == 0 else modes[::-1]):
                    per_round[m].append(time_call(lambda f=fns[m], x=x: f(x), b, warmup=1 if r == 0 else 0,
                                                  repeats=args.calls).median_ms)
            base = statistics.median(per_round["fp32"])
            for m in modes:
                ms = statistics.median(per_round[m])
                row = {"tokens": cfg[0], "depth": cfg[1], "width": cfg[2], "batch_size": b, "mode": m, "ms": ms,
                       "speedup": base / ms, "max_logit_dev": acc[m][0], "top1_agreement": acc[m][1],
                       "first_call_s": first[m], "load": os.getloadavg()[0]}
                row["agreement_images"] = xs.shape[0]
                rows.append(row)
                print(f"{cfg[0]}/{cfg[1]}/{cfg[2]} b{b} {m:17s} {ms:9.2f} ms  x{base / ms:5.2f}  "
                      f"dev {acc[m][0]:.3g}  agree {100 * acc[m][1]:.2f}%  first {first[m]:.1f}s  "
                      f"load {row['load']:.1f}", flush=True)
        print(f"configuration {cfg} done in {time.time() - t0:.0f}s", flush=True)
        if args.json:  # after every configuration: an interrupted run keeps what it measured
            meta = {"model": args.model or args.preset, "eval_images": xs_desc, "rounds": args.rounds,
                    "calls": args.calls, "threads": torch.get_num_threads(), "machine": machine_info()}
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
