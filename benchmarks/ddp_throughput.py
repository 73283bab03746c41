"""Training throughput of 1 process vs N torchrun processes on this machine.

    flock /tmp/adaperceiver-heavy.lock python benchmarks/ddp_throughput.py [--steps 60] [--nproc 2]

Both runs train adaperceiver_tiny jointly on Fashion-MNIST with the same global batch, no
augmentation and no evaluation; images/s is read from each run's metrics.csv (the logged windows
after the first, which holds start-up). The one-process run may use every core (torch threads =
cores); each of the N processes gets cores / N threads, so both use the whole machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

COMMON = ["-m", "adaperceiver", "train", "--dataset", "fashion_mnist", "--no-augment", "--epochs", "1",
          "--batch-size", "128", "--log-every", "10", "--no-progress", "--val-subset", "256"]


def img_per_s(run_dir: Path) -> float:
    with (run_dir / "metrics.csv").open() as f:
        rows = [float(r["img_s"]) for r in csv.DictReader(f) if r["split"] == "train" and r.get("img_s")]
    return statistics.median(rows[1:] or rows)


def run(nproc: int, steps: int, out: Path, cores: int) -> float:
    name = f"p{nproc}"
    shutil.rmtree(out / name, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc))}
    args = COMMON + ["--max-steps", str(steps), "--out", str(out), "--name", name]
    if nproc == 1:
        cmd = [sys.executable] + args
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + args
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return img_per_s(out / name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--out", default="runs/ddp_throughput")
    ap.add_argument("--repeats", type=int, default=2, help="alternate the two runs this many times")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    out = Path(args.out)
    one, many = [], []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        one.append(run(1, args.steps, out, cores))
        many.append(run(args.nproc, args.steps, out, cores))
    a, b = statistics.median(one), statistics.median(many)
    print(f"cores: {cores}; global batch 128; {args.steps} steps per run; runs interleaved x{args.repeats}")
    print(f"1 process  ({cores} threads):            {a:8.1f} img/s   (runs: {', '.join(f'{v:.0f}' for v in one)})")
    print(f"{args.nproc} processes ({max(1, cores // args.nproc)} thread(s) each, gloo): {b:8.1f} img/s   "
          f"(runs: {', '.join(f'{v:.0f}' for v in many)})")
    print(f"ratio {args.nproc}-process / 1-process: {b / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
