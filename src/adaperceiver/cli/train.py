"""``adaperceiver train``: one adaptive model (or a static baseline), resumable, one process or torchrun."""

from __future__ import annotations

import sys
from pathlib import Path

from ..models.presets import is_peer
from ..tasks import get_task
from ..training import NonFiniteLossError, ObjectiveConfig, TrainConfig, Trainer, distributed, last_checkpoint, load_run_config
from .config_file import add_config_file_options, write_config_yaml
from .options import RESUME_MAY_CHANGE, add_config_options, config_from_args, flag_for, option_values, resume_config

TRAIN_GROUPS = ("model", "data", "optimisation", "objective", "run")


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train an AdaPerceiver jointly over tokens x depth x width (or a static baseline)",
        description="Train one adaptive model with the joint objective: one backbone pass per batch at the maximum "
                    "token count, a read-out for every token granularity and every block, one FFN width per sample. "
                    "Writes RUN_DIR=OUT/NAME with model.safetensors + config.json (load with "
                    "adaperceiver.from_pretrained(RUN_DIR)), metrics.csv and resumable checkpoints.")
    groups = add_config_options(p, TrainConfig, TRAIN_GROUPS)
    groups["run"].add_argument(
        "--resume", action="store_true",
        help="continue OUT/NAME from its last checkpoint with its saved settings (only " + ", ".join(
            flag_for(k) for k in RESUME_MAY_CHANGE) + " may change); starts fresh when OUT/NAME has no "
        "checkpoint yet, so one command line serves torchrun --max-restarts")
    add_config_file_options(p)
    p.set_defaults(func=_cli_train)


def _cli_train(args) -> int:
    info = distributed.setup(option_values(args)["device"])  # one process, or a rank of a torchrun launch
    try:
        return _train_from_args(args, info)
    finally:
        distributed.teardown()


def _train_from_args(args, info: distributed.DistInfo) -> int:
    say = print if info.is_main else (lambda *a, **k: None)
    values = option_values(args)
    run_dir = Path(values["out_dir"]) / values["name"]
    if args.resume and last_checkpoint(run_dir) is not None:
        cfg = resume_config(args, run_dir, values, load_run_config(run_dir))
    elif values["static"] is not None or is_peer(values["model"]):  # a static model: the one-setting objective
        objective = ObjectiveConfig.static(label_smoothing=values["objective.label_smoothing"])
        cfg = config_from_args(TrainConfig, args, objective=objective)
    else:
        cfg = config_from_args(TrainConfig, args)
    try:
        trainer = Trainer(cfg, get_task(cfg.task), dist_info=info)
        if info.is_main:
            write_config_yaml(args, cfg.run_dir, cfg)  # --config RUN_DIR/config.yaml re-runs this run
        result = trainer.fit(resume=args.resume)
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
