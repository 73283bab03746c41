"""Adaptive-inference experiment on a trained tiny AdaPerceiver (Fashion-MNIST).

Trains per-input policies at several cost weights against the frozen backbone and compares them,
on the held-out validation split, with the full configuration, every fixed configuration,
confidence early exit (threshold sweep) and the oracle. Writes ``comparators.{csv,json}``,
``accuracy_vs_gflops.png`` and ``summary.md`` into ``--out``.

The policy learns on training images the backbone did *not* see when the run used
``train_subset`` (the complement of the run's seeded subset), so its rewards are not inflated by
training-set fit; otherwise on the first ``--policy-images`` training images.

Run it alone on the machine (it times things)::

    flock /work/heavy.lock python benchmarks/policy_experiment.py \
        --model runs/policy_tiny_fmnist --out runs/policy_experiment
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from adaperceiver import from_pretrained
from adaperceiver.adapt.policy import (
    PolicyConfig,
    PolicyTrainConfig,
    TrainLog,
    collect_outcomes,
    configuration_flops,
    configuration_latency,
    evaluate_comparators,
    format_summary,
    save_policy,
    train_policy,
    write_results,
)
from adaperceiver.data import SubsetDataset, get_dataset
from adaperceiver.evaluation import machine_info


def policy_split(run_dir: Path, dataset: str, n: int) -> tuple[torch.utils.data.Dataset, str]:
    """Training images the backbone did not see (complement of the run's train_subset), else the first n."""
    base = get_dataset(dataset, "train")
    meta = json.loads((run_dir / "config.json").read_text())
    subset = (meta.get("train") or {}).get("train_subset")
    if subset:
        seen = set(SubsetDataset(base, subset).indices)
        unseen = [i for i in range(len(base)) if i not in seen][:n]
        return torch.utils.data.Subset(base, unseen), f"{len(unseen)} training images outside the backbone's subset"
    return torch.utils.data.Subset(base, list(range(min(n, len(base))))), f"first {n} training images (seen by the backbone)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="trained run directory")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--out", required=True)
    p.add_argument("--policy-images", type=int, default=20000)
    p.add_argument("--lams", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    p.add_argument("--reward", default="ce", choices=["ce", "correct"])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--baselines", nargs="+", default=["ema", "loo"], choices=["ema", "loo"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--entropy", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--policy-dim", type=int, default=16)
    p.add_argument("--policy-blocks", type=int, default=2, help="Mixer blocks (0: project each patch and pool, the cheapest net)")
    p.add_argument("--cost", choices=["flops", "latency"], default="flops",
                   help="what the policy's reward charges: FLOPs, or measured ms per image at --cost-batch-size")
    p.add_argument("--cost-batch-size", type=int, default=1)
    p.add_argument("--taus", type=float, nargs="*", default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999])
    p.add_argument("--latency-batch-sizes", type=int, nargs="*", default=[1, 64])
    p.add_argument("--latency-images", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val-limit", type=int, default=None, help="only the first N held-out images (quick checks)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    run = Path(args.model)
    out = Path(args.out)
    model = from_pretrained(run)
    t0 = time.time()
    train_data, train_desc = policy_split(run, args.dataset, args.policy_images)
    train_out = collect_outcomes(model, train_data)
    val_out = collect_outcomes(model, get_dataset(args.dataset, "val"), train_out.space, limit=args.val_limit)
    cost = configuration_flops(model, train_out.space)  # the comparators' GFLOPs columns, whatever the reward charges
    train_cost = cost if args.cost == "flops" else configuration_latency(model, train_out.space, args.cost_batch_size)
    print(f"reward tables: {len(train_out)} policy-training images ({train_desc}), {len(val_out)} held-out; "
          f"{time.time() - t0:.0f}s")
    full_train = 100 * float(train_out.correct[:, -1, -1, -1].float().mean())
    full_val = 100 * float(val_out.correct[:, -1, -1, -1].float().mean())

    policies, logs = {}, {}
    for baseline in args.baselines:
        for lam in args.lams:
            cfg = PolicyTrainConfig(lam=lam, reward=args.reward, scale=args.scale, entropy=args.entropy,
                                    epochs=args.epochs, lr=args.lr, baseline=baseline, seed=args.seed)
            log = TrainLog()
            t1 = time.time()
            pol = train_policy(model, train_out, train_cost, cfg, PolicyConfig(dim=args.policy_dim, num_blocks=args.policy_blocks), log=log)
            name = f"{baseline} lam={lam:g}"
            policies[name] = pol
            logs[name] = {"train_acc_greedy_last_batch": 100 * log.accuracy[-1], "train_cost_greedy_last_batch": log.mean_cost[-1],
                          "seconds": time.time() - t1}
            save_policy(pol, out / "policies" / f"{baseline}_lam{lam:g}", extra={"lam": lam, "train": asdict(cfg)})
            print(f"{name}: trained in {logs[name]['seconds']:.0f}s")

    t2 = time.time()
    result = evaluate_comparators(model, val_out, cost, policies, args.taus, args.latency_batch_sizes,
                                  latency_images=args.latency_images)
    print(f"comparators: {time.time() - t2:.0f}s")
    meta = {"model": str(run), "dataset": args.dataset, "policy_train": train_desc, "args": vars(args),
            "full_acc_policy_train_split": full_train, "full_acc_val": full_val, "policy_logs": logs,
            "machine": machine_info()}
    write_results(result, out, meta)
    if args.latency_batch_sizes:  # the shipping view: the same configurations as slim static models
        meta["slim"] = slim_latency(model, result, args.latency_batch_sizes)
        write_results(result, out, meta)
    summary = format_summary(result)
    print(summary)
    (out / "summary.md").write_text(markdown_tables(result) + "\n")
    return 0


def slim_latency(model, result, batch_sizes) -> list[dict]:
    """Adaptive model at a configuration vs its slim export: parameters and median latency per call."""
    from adaperceiver.evaluation import measure_latency
    from adaperceiver.models.slim import slim
    from adaperceiver.models.util import num_parameters

    picks = [next(r for r in result["rows"] if r["method"] == "full")]
    par = result["summary"].get("parity_fixed")
    if par:
        picks.append(next(r for r in result["rows"] if r["method"] == "fixed" and r["setting"] == par["setting"]))
    out = []
    for r in picks:
        t, d, w = r["tokens"], r["depth"], r["width"]
        small = slim(model, t, d, w)
        row = {"configuration": f"{t}/{d}/{w}", "params_adaptive": num_parameters(model), "params_slim": num_parameters(small)}
        for b in batch_sizes:
            row[f"adaptive_ms_b{b}"] = measure_latency(model, (t, d, w), b, repeats=20).median_ms
            row[f"slim_ms_b{b}"] = measure_latency(small, None, b, repeats=20).median_ms
        out.append(row)
        print("slim", row)
    return out


def markdown_tables(result) -> str:
    rows = result["rows"]
    bss = result["summary"]["latency_batch_sizes"]
    lat_cols = [f"latency_ms_b{b}" for b in bss]
    head = "| method | setting | top-1 (%) | GFLOPs/img | " + " | ".join(f"ms/img @b{b}" for b in bss) + " |"
    lines = [head, "|" + "---|" * (4 + len(bss))]
    from adaperceiver.evaluation import pareto_front

    fixed = [r for r in rows if r["method"] == "fixed"]
    flags = pareto_front([(r["gflops"], r["acc1"]) for r in fixed])
    shown = [r for r in rows if r["method"] != "fixed"] + [r for r, f in zip(fixed, flags) if f]
    for r in shown:
        label = r["method"] + (" (front)" if r["method"] == "fixed" else "")
        lines.append(f"| {label} | {r['setting']} | {r['acc1']:.2f} | {r['gflops'] * 1e3:.3f}e-3 | "
                     + " | ".join(f"{r[c]:.3f}" if c in r else "-" for c in lat_cols) + " |")
    lines.append("")
    lines.append("| family | best point within 0.1 pp of full | top-1 (%) | FLOPs saved |")
    lines.append("|---|---|---|---|")
    for m in ("fixed", "early_exit", "policy", "oracle"):
        s = result["summary"].get(f"parity_{m}")
        lines.append(f"| {m} | {s['setting']} | {s['acc1']:.2f} | {s['flops_saved_pct']:.1f} % |" if s
                     else f"| {m} | none | - | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
