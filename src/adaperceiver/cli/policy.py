"""``adaperceiver policy train | eval``: learned per-input configuration policies and their comparators."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..adapt.budget import CACHE_NAME, machine_key
from ..adapt.policy import (
    BASELINES,
    REWARDS,
    PolicyConfig,
    PolicyTrainConfig,
    TrainLog,
    collect_outcomes,
    configuration_flops,
    configuration_latency,
    evaluate_comparators,
    format_summary,
    load_policy,
    save_policy,
    train_policy,
    write_results,
)
from ..checkpoint import from_pretrained
from ..errors import UserError
from ..evaluation import machine_info
from .common import add_data_options, add_device_option, add_inference_options, check_limit, command_device, flags_named, load_dataset
from .config_file import add_config_file_options, write_config_yaml


def register(sub) -> None:
    p = sub.add_parser("policy", help="train / evaluate per-input configuration policies",
                       description="Learned per-input choice of (tokens, depth, width) on a frozen backbone.")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    t = psub.add_parser("train", help="REINFORCE policies (one per lambda) against a frozen classifier")
    t.add_argument("--model", required=True, help="model / run directory")
    t.add_argument("--dataset", default="fashion-mnist", help="dataset name for adaperceiver.data.get_dataset "
                   "(name or name:ROOT)")
    t.add_argument("--split", default="train", help="split the policy learns on")
    t.add_argument("--limit", type=int, default=None, help="use only the first N images")
    t.add_argument("--lams", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4], help="cost weights, one policy each")
    t.add_argument("--reward", choices=REWARDS, default="ce")
    t.add_argument("--scale", type=float, default=1.0)
    t.add_argument("--entropy", type=float, default=0.01)
    t.add_argument("--baseline", choices=BASELINES, default="ema",
                   help="ema: EMA of the mean reward; loo: per image, mean reward of its other sampled actions")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--policy-blocks", type=int, default=PolicyConfig.num_blocks,
                   help="Mixer blocks of the policy network (0: project each patch and pool, the cheapest)")
    t.add_argument("--policy-dim", type=int, default=PolicyConfig.dim, help="channels of the policy network")
    t.add_argument("--cost", choices=["flops", "latency"], default="flops",
                   help="what the reward charges: FLOPs per image, or ms per image measured here at batch 1")
    t.add_argument("--out", required=True, help="output directory (one sub-directory per lambda)")
    add_data_options(t)
    add_device_option(t)
    add_config_file_options(t)
    t.set_defaults(func=_cli_train)

    e = psub.add_parser("eval", help="compare policies with fixed configurations, early exit and the oracle")
    e.add_argument("--model", required=True, help="model / run directory")
    e.add_argument("--policies", nargs="*", default=[], help="policy directories (from 'policy train')")
    e.add_argument("--dataset", default="fashion-mnist")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--taus", type=float, nargs="*", default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999])
    e.add_argument("--latency-batch-sizes", type=int, nargs="*", default=[1, 64],
                   help="batch sizes to time every method at (none: skip timing)")
    e.add_argument("--latency-images", type=int, default=128)
    e.add_argument("--out", required=True)
    add_data_options(e)
    add_inference_options(e)
    add_device_option(e)
    e.set_defaults(func=_cli_eval)


# config fields -> the flags that set them, for error messages
_TRAIN_FLAGS = {"lam": "--lams", "scale": "--scale", "entropy": "--entropy", "epochs": "--epochs",
                "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed", "dim": "--policy-dim",
                "num_blocks": "--policy-blocks"}


def _cli_train(args) -> int:
    with flags_named(_TRAIN_FLAGS):  # every value checked before the slow part
        check_limit(args.limit)
        policy_cfg = PolicyConfig(dim=args.policy_dim, num_blocks=args.policy_blocks)
        cfgs = [PolicyTrainConfig(lam=lam, reward=args.reward, scale=args.scale, entropy=args.entropy, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, seed=args.seed, baseline=args.baseline)
                for lam in args.lams]
    model = from_pretrained(args.model, map_location=command_device(args.device))
    outcomes = collect_outcomes(model, load_dataset(args.dataset, args.split, model, args), limit=args.limit)
    out = Path(args.out)
    write_config_yaml(args, out)
    cost = (configuration_flops(model, outcomes.space) if args.cost == "flops"
            else configuration_latency(model, outcomes.space, cache_path=out / CACHE_NAME))
    for lam, cfg in zip(args.lams, cfgs):
        log = TrainLog()
        policy = train_policy(model, outcomes, cost, cfg, policy_cfg, log=log)
        d = save_policy(policy, out / f"lam{lam:g}", extra={"lam": lam, "train": asdict(cfg), "model": str(args.model),
                                                           "dataset": args.dataset, "split": args.split,
                                                           "num_images": len(outcomes), "cost": args.cost,
                                                           **({"latency_key": machine_key(model, 1)}
                                                              if args.cost == "latency" else {})})
        print(f"lam={lam:g}: train acc of chosen configs {100 * log.accuracy[-1]:.1f}%, "
              f"normalised cost {log.mean_cost[-1]:.3f} -> {d}")
    return 0


def _cli_eval(args) -> int:
    check_limit(args.limit)
    bad = [t for t in args.taus if not 0 <= t <= 1]
    if bad:
        raise UserError(f"--taus must be confidence thresholds in [0, 1], got {bad[0]}")
    if any(b < 1 for b in args.latency_batch_sizes) or args.latency_images < 1:
        raise UserError(f"--latency-batch-sizes and --latency-images must be >= 1, got {args.latency_batch_sizes} "
                        f"and {args.latency_images}")
    device = command_device(args.device)
    model = from_pretrained(args.model, map_location=device)
    policies = {}
    for d in args.policies:
        pol, meta = load_policy(d)
        policies[f"lam={meta.get('lam', Path(d).name)}"] = pol.to(device)
    space = next(iter(policies.values())).space if policies else None
    outcomes = collect_outcomes(model, load_dataset(args.dataset, args.split, model, args), space, limit=args.limit)
    cost = configuration_flops(model, outcomes.space)
    result = evaluate_comparators(model, outcomes, cost, policies, args.taus, args.latency_batch_sizes,
                                  latency_images=args.latency_images, dtype=args.dtype, compile=args.compile)
    write_results(result, args.out, meta={"model": str(args.model), "dataset": args.dataset, "split": args.split,
                                          "machine": machine_info(),
                                          "timed_as": {"dtype": args.dtype or "float32", "compile": args.compile}})
    print(format_summary(result))
    return 0
