"""``adaperceiver demo``: train adaperceiver_tiny on Fashion-MNIST, sweep every configuration, write a report."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import LOCK_NAME, atomic_write, run_lock
from ..errors import UserError
from ..evaluation import measure_gflops, measure_latency, run_sweep
from ..evaluation.tensorboard import TENSORBOARD_DIR, log_sweep
from ..models.setting import Setting
from ..models.util import num_parameters
from ..models.vit import StaticViT, ViTConfig
from ..tasks import get_task
from ..training import ObjectiveConfig, TrainConfig, Trainer, TrainResult, train
from .common import batch_sizes_arg, parse_config_triple
from .config_file import add_config_file_options, write_config_yaml
from .options import add_config_options, config_from_args

# the demo's schedule: ~6 minutes of training on 2 CPU cores; in this short schedule more, smaller
# steps, a higher peak lr and no augmentation converge faster (docs/training.md has the measurements)
# (the all-latents read-outs weighted 3x: +0.5 pp at full, nothing lost below; docs/training.md)
DEMO_DEFAULTS = {"model": "adaperceiver_tiny", "name": "demo", "epochs": 6, "batch_size": 64, "lr": 3e-3, "augment": False,
                 "objective.full_token_weight": 3.0}
DEMO_BASELINES = (Setting(8, 2, 32), Setting(16, 3, 48), Setting(32, 4, 64))

def register(sub) -> None:
    d = sub.add_parser(
        "demo", help="train adaperceiver_tiny on Fashion-MNIST, sweep every configuration, write a report",
        description="The whole story in one command (about 6 minutes of training on 2 CPU cores): train "
                    "adaperceiver_tiny jointly on Fashion-MNIST (Debian package dataset-fashion-mnist), evaluate "
                    "every (tokens, depth, width) configuration (accuracy, GFLOPs, latency), mark the Pareto "
                    "front, plot it, and write OUT/NAME/summary.md. With --baselines, also train static models "
                    "at a few configurations (same data and epochs) and draw them on the plot.")
    add_config_options(d, TrainConfig, ("model", "data", "optimisation", "objective", "run"), defaults=DEMO_DEFAULTS,
                       exclude=("task", "static", "init_from", "freeze_backbone"))
    d.add_argument("--overwrite", action="store_true", help="delete an existing OUT/NAME first")
    d.add_argument("--baselines", nargs="*", default=None, metavar="TOKENS,DEPTH,WIDTH|vit",
                   help="also train baselines with the same data and epochs: static models at TOKENS,DEPTH,WIDTH "
                        "and, for 'vit', a plain ViT of the adaptive model's width whose depth gives the FLOPs "
                        "closest to its full configuration; bare --baselines trains "
                        + " ".join(map(str, DEMO_BASELINES)) + " vit (roughly doubles the time)")
    d.add_argument("--latency-batch-sizes", type=batch_sizes_arg, default=(1, 64),
                   help="batch sizes for sweep latency (default 1,64)")
    add_config_file_options(d)
    d.set_defaults(func=_cli_demo)




def train_baseline(base: TrainConfig, config: Setting, latency_batch_size: int = 1) -> dict[str, Any]:
    """Train a static model at ``config`` with ``base``'s data and schedule; return its plot entry.

    The entry has ``name``, ``acc1`` (validation, exported weights), ``gflops`` per image and
    ``latency_ms`` (median, batch ``latency_batch_size``), measured like the sweep measures.
    """
    t, d, w = config
    cfg = dataclasses.replace(base, static=config, name=f"{base.name}/baselines/static_t{t}_d{d}_w{w}",
                              objective=ObjectiveConfig.static(label_smoothing=base.objective.label_smoothing))
    result = train(cfg, get_task(cfg.task))
    model = result.model
    return {"name": f"static t{t} d{d} w{w}", "tokens": t, "depth": d, "width": w,
            "acc1": result.metrics.get("val_acc1", float("nan")),  # percent, like the sweep
            "gflops": measure_gflops(model),
            "latency_ms": measure_latency(model, None, latency_batch_size).median_ms,
            "train_seconds": round(result.train_seconds, 1), "run_dir": str(result.run_dir)}


def matched_vit_config(reference: nn.Module) -> ViTConfig:
    """A plain ViT with ``reference``'s patch size, width, heads and MLP ratio, and the depth (1 to
    twice ``reference``'s) whose FLOPs per image come closest to ``reference``'s full configuration."""
    c = reference.cfg
    target = measure_gflops(reference)
    best = None
    for depth in range(1, 2 * c.depth + 1):
        vc = ViTConfig(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, embed_dim=c.embed_dim,
                       depth=depth, num_heads=c.num_heads, mlp_ratio=c.ffn_ratio, num_classes=c.num_classes)
        gap = abs(measure_gflops(StaticViT(vc)) - target)
        if best is None or gap < best[0]:
            best = (gap, vc)
    return best[1]


def train_vit_baseline(base: TrainConfig, reference: nn.Module, latency_batch_size: int = 1) -> dict[str, Any]:
    """Train the plain ViT of :func:`matched_vit_config` with ``base``'s data and schedule; its plot entry."""
    vc = matched_vit_config(reference)
    cfg = dataclasses.replace(base, name=f"{base.name}/baselines/vit_d{vc.depth}", model="static_vit",
                              objective=ObjectiveConfig.static(label_smoothing=base.objective.label_smoothing))
    torch.manual_seed(cfg.seed)
    result = Trainer(cfg, get_task(cfg.task), model=StaticViT(vc)).fit()
    model = result.model
    return {"name": f"plain ViT d{vc.depth} w{vc.embed_dim}", "tokens": None, "depth": vc.depth, "width": vc.embed_dim,
            "acc1": result.metrics.get("val_acc1", float("nan")),
            "gflops": measure_gflops(model),
            "latency_ms": measure_latency(model, None, latency_batch_size).median_ms,
            "train_seconds": round(result.train_seconds, 1), "run_dir": str(result.run_dir)}


def _cli_demo(args) -> int:
    # every option is checked before the minutes of training start
    sizes = args.latency_batch_sizes
    specs = None
    if args.baselines is not None:
        specs = [s if s == "vit" else parse_config_triple(s, "--baselines") for s in args.baselines] or [*DEMO_BASELINES, "vit"]
    cfg = config_from_args(TrainConfig, args)
    with run_lock(cfg.run_dir):  # no other run writes (or deletes) this directory meanwhile
        return _demo(args, cfg, sizes, specs)


def _demo(args, cfg: TrainConfig, sizes: tuple[int, ...], specs: list[Setting | str] | None) -> int:
    old = [p for p in cfg.run_dir.iterdir() if p.name != LOCK_NAME]
    if old:
        if not args.overwrite:
            raise UserError(f"{cfg.run_dir} exists; pass --overwrite to replace it or --name to pick another")
        for p in old:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    write_config_yaml(args, cfg.run_dir, cfg)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, get_task(cfg.task))
    result = trainer.fit()
    baselines = []
    if specs is not None:
        for spec in specs:
            if spec == "vit":
                print("training the plain ViT baseline of matched FLOPs ...")
                baselines.append(train_vit_baseline(cfg, result.model, sizes[0]))
            else:
                print(f"training static baseline {spec} ...")
                baselines.append(train_baseline(cfg, spec, sizes[0]))
    loader = trainer.val_loader()
    sweep_dir = cfg.run_dir / "sweep"
    rows = run_sweep(result.model, loader, sweep_dir, metric=trainer.task.sweep_metric, baselines=baselines or None,
                     latency_batch_sizes=sizes, progress=cfg.progress)
    if cfg.logger == "tensorboard":  # the sweep beside the training curves
        log_sweep(cfg.run_dir / TENSORBOARD_DIR, rows, sweep_dir / "pareto.png", step=result.step)
    summary = write_summary(cfg, trainer, result, rows, baselines, sweep_dir, sizes, time.perf_counter() - t0)
    print(summary.read_text())
    print(f"everything is in {cfg.run_dir}/: summary.md, sweep/sweep.csv, sweep/sweep.json, sweep/pareto.png, "
          f"metrics.csv, model.safetensors + config.json (adaperceiver.from_pretrained('{cfg.run_dir}'))")
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_summary(cfg: TrainConfig, trainer: Trainer, result: TrainResult, rows: Sequence[dict[str, Any]],
                  baselines: Sequence[dict[str, Any]], sweep_dir: Path, sizes: Sequence[int], wall_s: float) -> Path:
    """``RUN_DIR/summary.md``: settings, training time, accuracy, the Pareto rows, baselines, file links."""
    model_cfg = trainer.model.cfg
    primary = trainer.task.primary_metric
    lat = [f"latency_ms_b{b}" for b in sizes]
    lines = [f"# AdaPerceiver run `{cfg.name}`", "",
             f"- model: `{cfg.model}` ({num_parameters(trainer.model):,} parameters): "
             f"embed_dim {model_cfg.embed_dim}, {model_cfg.depth} blocks, token granularities "
             f"{list(model_cfg.token_grans)}, widths {list(model_cfg.widths)}, patch {model_cfg.patch_size}, "
             f"image {model_cfg.img_size}",
             f"- data: `{cfg.dataset}`, {len(trainer.data.train):,} training / "
             f"{len(trainer.data.val) if trainer.data.val is not None else 0:,} validation images",
             f"- training: {cfg.epochs} epochs x {trainer.steps_per_epoch} steps, batch {cfg.batch_size}, AdamW lr "
             f"{cfg.lr:g} (warm-up {cfg.warmup_steps}, cosine), EMA {cfg.ema_decay:g}, seed {cfg.seed}, joint objective "
             f"(depth weighting {cfg.objective.depth_weighting}, per-sample widths {cfg.objective.sample_widths})",
             f"- training time: {result.train_seconds:.0f} s; whole command: {wall_s:.0f} s "
             f"({torch.get_num_threads()} torch threads, device {trainer.device})",
             f"- final validation (full configuration, {cfg.exported} weights): " +
             ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()), ""]
    front = sorted((r for r in rows if r.get("pareto_gflops")), key=lambda r: r["gflops"])
    if front:
        cols = ["tokens", "depth", "width", primary, "gflops", *lat]
        cols = [c for c in cols if c in front[0]]
        lines += ["## Pareto-optimal configurations (accuracy vs GFLOPs)", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in front]
        lines.append("")
    if baselines:
        full = max(rows, key=lambda r: (r.get("tokens", 0), r.get("depth", 0), r.get("width", 0)), default={})
        lines += ["## Baselines trained alone (same data and epochs) vs the one adaptive model", "",
                  f"| configuration | static {primary} | adaptive {primary} | GFLOPs | static latency_ms (b{sizes[0]}) |",
                  "|---|---|---|---|---|"]
        for b in baselines:
            if b["tokens"] is None:  # the plain ViT: no configuration of the adaptive model to compare with
                lines.append(f"| {b['name']} | {_fmt(b['acc1'])} | (full: {_fmt(full.get(primary, 'n/a'))}) | "
                             f"{_fmt(b['gflops'])} | {_fmt(b['latency_ms'])} |")
                continue
            match = next((r for r in rows if (r.get("tokens"), r.get("depth"), r.get("width")) ==
                          (b["tokens"], b["depth"], b["width"])), {})
            lines.append(f"| {b['tokens']},{b['depth']},{b['width']} | {_fmt(b['acc1'])} | "
                         f"{_fmt(match.get(primary, 'n/a'))} | {_fmt(b['gflops'])} | {_fmt(b['latency_ms'])} |")
        lines.append("")
    rel = sweep_dir.relative_to(cfg.run_dir)
    lines += ["## Files", "", f"- [{rel}/sweep.csv]({rel}/sweep.csv), [{rel}/sweep.json]({rel}/sweep.json): "
              f"every configuration ({len(rows)} rows)",
              f"- [{rel}/pareto.png]({rel}/pareto.png): accuracy vs GFLOPs and vs latency", "",
              f"![Pareto plot]({rel}/pareto.png)", "",
              "- [metrics.csv](metrics.csv): training curves; [config.json](config.json) + model.safetensors: "
              f"`adaperceiver.from_pretrained('{cfg.run_dir}')`", ""]
    path = cfg.run_dir / "summary.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines)))
    return path
