"""Cost of one joint (once-for-all) training step, against a plain step and the naive alternative.

Three full training steps (forward + backward + AdamW update) on the same ready batch:

* ``plain``: the full configuration only, ``CE(model(x), y)`` -- what a static model costs;
* ``joint``: :class:`adaperceiver.training.objective.JointObjective`, ONE backbone pass at the maximum token
  count with one FFN width per sample, a read-out for every token granularity x every depth;
* ``naive``: the same loss computed the obvious way, one backbone pass per (tokens, depth) read-out
  (each with the same per-sample widths), summed with the same weights, one backward. Its loss equals
  the joint loss (checked), so ``naive / joint`` is what the one-pass trick saves.

Steps are timed in interleaved rounds (plain, joint, naive, plain, ...) so machine noise hits all
three alike; the ratios are medians of the per-round ratios. Data loading is not timed.

Run it alone on the machine::

    flock /tmp/adaperceiver-heavy.lock python benchmarks/bench_joint_step.py --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from adaperceiver import create_model
from adaperceiver.training.objective import Batch, JointObjective


def naive_loss(model, obj: JointObjective, batch: Batch, widths: torch.Tensor) -> torch.Tensor:
    """The joint loss with one backbone pass per (depth, tokens) read-out."""
    depths, tokens = obj.readouts(model)
    weights = obj.weights(model)
    total = torch.zeros(())
    for i, d in enumerate(depths):
        for j, t in enumerate(tokens):
            logits = model(batch.images, tokens=t, depth=d, width=widths)
            total = total + weights[i, j] * F.cross_entropy(logits, batch.targets)
    return total


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="adaperceiver_tiny")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=15, help="timed interleaved rounds")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.preset).train()
    cfg = model.cfg
    x = torch.randn(args.batch_size, cfg.in_chans, cfg.img_size, cfg.img_size)
    y = torch.randint(0, cfg.num_classes, (args.batch_size,))
    obj = JointObjective()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = Batch(x, y)

    # the naive loss is the joint loss (same per-sample widths from the same generator)
    with torch.no_grad():
        joint_value, _ = obj(model, batch, torch.Generator().manual_seed(0))
        widths = obj.sample_widths(model, args.batch_size, torch.Generator().manual_seed(0))
        naive_value = naive_loss(model, obj, batch, widths)
    assert torch.allclose(joint_value, naive_value, atol=1e-5), (float(joint_value), float(naive_value))

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def plain() -> None:
        update(F.cross_entropy(model(x), y))

    def joint() -> None:
        update(obj(model, batch, torch.Generator().manual_seed(0))[0])

    def naive() -> None:
        update(naive_loss(model, obj, batch, obj.sample_widths(model, args.batch_size, torch.Generator().manual_seed(0))))

    steps = {"plain": plain, "joint": joint, "naive": naive}
    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = lambda a, b: statistics.median(ta / tb for ta, tb in zip(times[a], times[b]))  # noqa: E731
    depths, tokens = obj.readouts(model)
    result = {
        "preset": args.preset, "batch_size": args.batch_size, "rounds": args.rounds,
        "readouts": f"{len(depths)} depths x {len(tokens)} token counts = {len(depths) * len(tokens)}",
        "widths": list(cfg.widths), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "median_ms": {k: round(v, 2) for k, v in med.items()},
        "joint_over_plain": round(ratio("joint", "plain"), 3), "naive_over_joint": round(ratio("naive", "joint"), 2),
        "naive_over_plain": round(ratio("naive", "plain"), 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
