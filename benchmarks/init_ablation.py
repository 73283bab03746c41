"""Does the weight init decide how fast the adaptive model learns? One 700-step run per variant.

Each variant trains ``adaperceiver_tiny`` on Fashion-MNIST exactly as ``paper_claims.py`` trains it (its
``train_one``: the library trainer, the training items outside the held-out split, lr 2e-3, wd 0.05,
seed 0), after re-initialising the model as the variant says, and scores the full and every other setting
on the held-out split and the test split. One JSON line per variant is appended to ``--out``::

    flock /work/heavy.lock python benchmarks/init_ablation.py trunc_normal:0.01 torch:0.01 torch:0.1 trunc_normal:0.1

A variant is ``INIT:LAYERSCALE``: INIT ``trunc_normal`` (std 0.02) or ``torch`` (PyTorch's per-layer
default), LAYERSCALE the start value of every block's LayerScale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_claims as pc  # noqa: E402  (the same training and scoring as the claims)

from adaperceiver.data import get_dataset  # noqa: E402
from adaperceiver.models import create_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", help="INIT:LAYERSCALE, e.g. torch:0.01")
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--out", default=str(pc.ROOT / "runs" / "init_ablation" / "results.jsonl"))
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        init, _, ls = variant.partition(":")
        pc.build = lambda name, task, init=init, ls=float(ls): create_model(
            name, num_classes=10, in_chans=1, init=init, ls_init=ls)
        run_args = argparse.Namespace(steps={"*": args.steps}, batch_size=128, holdout=5000)
        run = out.parent / "runs" / variant.replace(":", "_ls")
        model, holdout, secs = pc.train_one("fmnist28", pc.ADAPTIVE, 2e-3, 0.05, 0, run_args, run)
        test = DataLoader(get_dataset("fashion_mnist", "val"), batch_size=256)
        held, tested = pc.accuracies(model, holdout), pc.accuracies(model, test)
        full, cheap = max(tested), min(tested)
        res = {"variant": variant, "steps": args.steps, "holdout_full": held[full], "test_full": tested[full],
               "test_cheapest": tested[cheap], "train_s": round(secs, 1), "machine": pc.machine()}
        print(json.dumps(res), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
