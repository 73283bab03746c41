"""Wall-clock of a learned policy against the full configuration, per grouping and with a compiled policy net.

Times, on the first ``--images`` test images in batches of each ``--batch-sizes`` value, in one
interleaved run with the comparators' timer (``adapt.policy.comparators._stream_ms``: ms per image, one warm-up
pass, CUDA synchronise on CUDA): the full configuration (eager), ``PolicyClassifier`` with each
grouping of ``--groups`` with the policy network eager and compiled (``+cp``), and the
policy's own cost (patch embedding + compiled policy network). Run alone (it times things)::

    flock /work/heavy.lock python benchmarks/policy_latency.py --model runs/tiny6 \\
        --policy runs/polexp/policies/loo_lam0.05
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch

from adaperceiver import from_pretrained
from adaperceiver.adapt.policy import PolicyClassifier, load_policy
from adaperceiver.adapt.policy.comparators import _stream_ms
from adaperceiver.data import get_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--policy", required=True, nargs="+", help="policy directories (from 'policy train' or policy_experiment.py)")
    p.add_argument("--groups", default="tokens", help="PolicyClassifier groupings to time, comma-separated")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = from_pretrained(args.model).eval()
    ds = get_dataset(args.dataset, "val")
    xs = torch.stack([ds[i][0] for i in range(args.images)])
    methods = {"full": lambda c: model(c)}
    for path in args.policy:
        policy = load_policy(path)[0]
        name = "/".join(Path(path).parts[-2:])  # parent/name: policies of two runs often share a name
        for group in args.groups.split(","):
            for cp in (False, True):
                runner = PolicyClassifier(model, policy, group=group, compile_policy=cp)
                methods[f"{name} {group}{'+cp' if cp else ''}"] = (lambda r: (lambda c: r(c)))(runner)
        choose = torch.compile(policy.choose, dynamic=False)
        methods[f"{name} patch+choose(c)"] = (lambda ch: (lambda c: ch(model.patch_embed(c)[0])))(choose)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    with torch.no_grad():
        for b in sizes:  # compile the policy network at each batch size outside the timing
            for f in methods.values():
                f(xs[:b])
        for b in sizes:
            times: dict[str, list[float]] = {k: [] for k in methods}
            for r in range(args.rounds):
                for k in (list(methods) if r % 2 == 0 else list(methods)[::-1]):
                    times[k].append(_stream_ms(methods[k], xs, b, repeats=1))
            full = statistics.median(times["full"])
            for k in methods:
                med = statistics.median(times[k])
                print(f"b{b} {k:40s} {med:.3f} ms/img  vs full {med / full:.3f}", flush=True)
    print("load", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
