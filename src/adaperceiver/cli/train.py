"""``adaperceiver train``: one adaptive model (or a static baseline), resumable, one process or torchrun."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ..tasks import get_task
from ..errors import UserError
from ..training import NonFiniteLossError, ObjectiveConfig, TrainConfig, distributed, last_checkpoint, load_run_config, train
from ..training.config import EXPORT_CHOICES
from .common import add_train_options, config_from_args, parse_config_triple, parse_overrides


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train an AdaPerceiver jointly over tokens x depth x width (or a static baseline)",
        description="Train one adaptive model with the joint objective: one backbone pass per batch at the maximum "
                    "token count, a read-out for every token granularity and every block, one FFN width per sample. "
                    "Writes RUN_DIR=OUT/NAME with model.safetensors + config.json (load with "
                    "adaperceiver.from_pretrained(RUN_DIR)), metrics.csv and resumable checkpoints.")
    g = p.add_argument_group("model")
    g.add_argument("--task", default="classification", help="registered task (default classification)")
    g.add_argument("--model", default="adaperceiver_tiny", help="model preset (default adaperceiver_tiny)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --set embed_dim=96 --set token_grans=[8,16,32]")
    g.add_argument("--static", default=None, metavar="TOKENS,DEPTH,WIDTH",
                   help="train a static baseline: the same architecture fixed at one configuration, e.g. 16,3,48")
    g.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from a trained model directory (parameters with matching name and shape)")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="with --init-from: train only the output query/queries, write cross-attention and head")
    g = add_train_options(p, epochs_default=5)
    g.add_argument("--name", default="run", help="run name: the run directory is OUT/NAME (default run)")
    g.add_argument("--resume", action="store_true",
                   help="continue OUT/NAME from its last checkpoint with its saved settings (only --max-steps, "
                        "--device, --num-workers and --no-progress may change); starts fresh when OUT/NAME has no "
                        "checkpoint yet, so one command line serves torchrun --max-restarts")
    g.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps in total")
    g.add_argument("--export", choices=EXPORT_CHOICES, default="ema",
                   help="weights written to model.safetensors: ema (default) or raw")
    g.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (default: each epoch)")
    g.add_argument("--log-every", type=int, default=20, help="steps between metrics.csv rows (default 20)")
    p.set_defaults(func=_cli_train)


def _cli_train(args) -> int:
    info = distributed.setup(args.device)  # one process, or a rank of a torchrun launch
    try:
        return _train_from_args(args, info)
    finally:
        distributed.teardown()


# options --resume may change; any other option given with --resume must equal the saved setting
RESUME_MAY_CHANGE = ("max_steps", "device", "num_workers", "no_progress", "resume", "out", "name")
# option dest -> TrainConfig field, where they differ
_FIELD_OF = {"overrides": "model_overrides", "out": "out_dir", "no_progress": "progress", "depth_weighting": "objective",
             "token_weights": "objective", "label_smoothing": "objective", "no_width_sampling": "objective"}


def _fresh_config(args) -> TrainConfig:
    """The run configuration the options describe (for a new run)."""
    static = parse_config_triple(args.static) if args.static else None
    cfg = config_from_args(args, task=args.task, model=args.model, model_overrides=parse_overrides(args.overrides),
                           static=static, init_from=args.init_from, freeze_backbone=args.freeze_backbone,
                           name=args.name, max_steps=args.max_steps, export=args.export,
                           checkpoint_every=args.checkpoint_every, log_every=args.log_every)
    if static:
        cfg = dataclasses.replace(cfg, objective=ObjectiveConfig.static(label_smoothing=args.label_smoothing))
    return cfg


def _resume_config(args, run_dir: Path) -> TrainConfig:
    """The saved configuration, refusing options given on the command line that would change it."""
    saved = load_run_config(run_dir)
    given = {d: opt for d, opt in getattr(args, "given", {}).items() if d not in RESUME_MAY_CHANGE}
    if given:
        wanted = json.loads(json.dumps(_fresh_config(args).to_dict()))
        kept = json.loads(json.dumps(saved.to_dict()))
        for dest, opt in sorted(given.items()):
            field = _FIELD_OF.get(dest, dest)
            if field in kept and wanted[field] != kept[field]:
                raise UserError(f"--resume continues {run_dir} with its saved settings, and {opt} would change "
                                f"{field} (saved {kept[field]!r}, given {wanted[field]!r}); only --max-steps, --device, "
                                f"--num-workers and --no-progress may change: drop {opt}, or start a new --name")
    return dataclasses.replace(saved, out_dir=args.out, name=args.name, max_steps=args.max_steps, device=args.device,
                               num_workers=args.num_workers, progress=not args.no_progress)


def _train_from_args(args, info: distributed.DistInfo) -> int:
    say = print if info.is_main else (lambda *a, **k: None)
    run_dir = Path(args.out) / args.name
    if args.resume and last_checkpoint(run_dir) is not None:
        cfg = _resume_config(args, run_dir)
    else:
        cfg = _fresh_config(args)
    try:
        result = train(cfg, get_task(cfg.task), resume=args.resume, dist_info=info)
    except NonFiniteLossError as e:
        say(f"adaperceiver train: {e}")
        return 1
    except KeyboardInterrupt:
        last = last_checkpoint(run_dir) if info.is_main else None
        kept = (f"the last complete checkpoint {last} is kept: continue with --resume" if last is not None
                else "no checkpoint was written yet")
        if info.is_main:
            print(f"adaperceiver train: interrupted; {kept}", file=sys.stderr)
        return 130
    procs = f" on {info.world_size} processes" if info.enabled else ""
    state = (f"finished at step {result.step}{procs}" if result.finished
             else f"stopped at step {result.step}{procs} (continue with --resume)")
    say(f"{state}; {result.train_seconds:.0f} s of training; " +
        ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    say(f"run directory: {result.run_dir} (adaperceiver.from_pretrained('{result.run_dir}'))")
    return 0
