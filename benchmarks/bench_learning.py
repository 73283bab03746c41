"""Learning efficiency: the adaptive model against a plain ViT of the same width and depth, same loop.

One plain training loop (issue 12) for every model: Fashion-MNIST, the full 60k training set, a
fixed 5k validation subset, AdamW (lr 2e-3, weight decay 0.05 on every parameter of two or more
dimensions: matrices, learned tokens and position tables), 100 warm-up steps then cosine to 0 at
the run's last step, batch 128, gradient clipping at 3.0, no augmentation, no EMA, seed-fixed
initialisation and data order. Each ``--steps`` value is a
separate run (its own cosine schedule); ``--evals`` adds evaluations inside a run.

Models (``--models``, comma-separated):

* ``vit``: :class:`adaperceiver.models.vit.StaticViT`, pre-norm, D=64, 4 blocks, 4 heads, patch 4,
  MLP ratio 2, class token (``vit_mean``: mean-pooled instead); ``--vit-set KEY=VALUE`` overrides a
  :class:`~adaperceiver.models.vit.ViTConfig` field (``init=trunc_normal``: the weaker pre-issue-26 init);
* ``vit_torch``: the outside reference of issue 26, built from ``nn.TransformerEncoderLayer`` (pre-norm,
  its default dropout 0.1 and ReLU, PyTorch's default init); ``vit_torch_nodrop``: without dropout;
* any preset name (``adaperceiver_tiny``, ``adaperceiver_tiny_v2``), optionally ``:joint``: trained
  with the library's joint objective (every depth and token read-out, per-sample widths) instead of
  plain cross-entropy on the full configuration. Adaptive models are evaluated at the full
  configuration and at the sub-configurations of ``--configs``. ``--set KEY=VALUE`` overrides a
  config field of every adaptive model of the run (the ablations of docs/training.md).

``--decay-all`` puts weight decay on every parameter (biases and norms too), as the outside loop did.

``--objective KEY=VALUE`` overrides a field of the joint objective's
:class:`~adaperceiver.training.objective.ObjectiveConfig` for the ``:joint`` entries, e.g.
``--objective sample_widths=false`` (which part of the objective costs the full configuration).

Prints one table per run length (rows: evaluation steps; columns: models) and appends every
evaluation to ``--csv``. Run it alone, under the heavy-job lock, e.g.::

    flock /work/heavy.lock python benchmarks/bench_learning.py --models vit,adaperceiver_tiny_v2 --steps 700
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adaperceiver import create_model
from adaperceiver.cli.options import parse_override
from adaperceiver.data import get_dataset
from adaperceiver.models.vit import StaticViT, ViTConfig
from adaperceiver.training.distributed import epoch_permutation
from adaperceiver.training.objective import Batch, JointObjective, ObjectiveConfig
from adaperceiver.training.trainer import param_groups, step_generator, warmup_cosine

DEFAULT_CONFIGS = "16,4,64;16,2,48;8,2,32;8,1,32"
FIELDS = ["model", "objective", "run_steps", "step", "seed", "params", "config", "val_acc1", "train_s", "ms_per_step",
          "threads", "torch"]


class TorchViT(torch.nn.Module):
    """The outside reference of issue 26: a plain ViT from ``nn.TransformerEncoderLayer`` (pre-norm, default
    dropout 0.1 and ReLU, PyTorch's default init), class token, learned positions N(0, 0.02)."""

    def __init__(self, img_size: int = 28, patch_size: int = 4, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, num_classes: int = 10, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.proj = torch.nn.Conv2d(1, dim, patch_size, patch_size)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = torch.nn.Parameter(0.02 * torch.randn(1, (img_size // patch_size) ** 2 + 1, dim))
        layer = torch.nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout, activation,
                                                 batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.proj(x).flatten(2).transpose(1, 2)
        z = torch.cat([self.cls.expand(len(z), -1, -1), z], 1) + self.pos
        return self.head(self.norm(self.encoder(z))[:, 0])


def build(name: str, overrides: dict | None = None, img_size: int = 28,
          patch_size: int = 4, vit_overrides: dict | None = None) -> tuple[torch.nn.Module, str]:
    """``(model, objective)`` for a ``--models`` entry, for grey ``img_size`` images cut in ``patch_size`` patches."""
    preset, _, objective = name.partition(":")
    objective = objective or "plain"
    if objective not in ("plain", "joint"):
        raise ValueError(f"model entry {name!r}: objective must be 'plain' or 'joint', got {objective!r}")
    if preset in ("vit_torch", "vit_torch_nodrop"):
        return TorchViT(img_size, patch_size, dropout=0.1 if preset == "vit_torch" else 0.0), "plain"
    if preset in ("vit", "vit_mean"):
        if objective != "plain":
            raise ValueError(f"{preset} has one configuration: train it with the plain objective, not {objective!r}")
        cfg = ViTConfig(img_size=img_size, patch_size=patch_size, in_chans=1, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
                        num_classes=10, pool="cls" if preset == "vit" else "mean", **(vit_overrides or {}))
        return StaticViT(cfg), objective
    sizes = {"img_size": img_size, "patch_size": patch_size, "in_chans": 1, "num_classes": 10}
    return create_model(preset, **{**sizes, **(overrides or {})}), objective


def as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 1, H, W), labels (N,))`` of a whole dataset, built once (each batch is then an index)."""
    if hasattr(ds, "images"):
        return ds.images, ds.labels
    items = ds.__getitems__(list(range(len(ds)))) if hasattr(ds, "__getitems__") else [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def parse_configs(text: str) -> list[tuple[int, int, int]]:
    out = []
    for part in filter(None, text.split(";")):
        vals = part.split(",")
        if len(vals) != 3:
            raise ValueError(f"--configs entries are tokens,depth,width separated by ';', got {part!r}")
        out.append(tuple(int(v) for v in vals))
    return out


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, configs, batch: int = 500) -> dict[str, float]:
    """Top-1 % of the full configuration ("full") and of each sub-configuration "t{T}_d{D}_w{W}"."""
    model.eval()
    out: dict[str, float] = {}
    if not hasattr(model, "forward_anytime") or len(model.configurations()) == 1:  # plain ViTs: one setting
        pred = torch.cat([model(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])
        out["full"] = 100.0 * float((pred == y).float().mean())
    else:
        cfg = model.cfg
        for w in sorted({cfg.embed_dim} | {c[2] for c in configs}):
            preds = torch.cat([model.forward_anytime(x[i:i + batch], width=w).outputs.argmax(-1)
                               for i in range(0, len(x), batch)], dim=-1)  # (depths, tokens, N)
            acc = 100.0 * (preds == y).float().mean(-1)
            grans = (*(g for g in cfg.token_grans if g < cfg.num_latents), cfg.num_latents)
            if w == cfg.embed_dim:
                out["full"] = float(acc[-1, -1])
            for t, d, cw in configs:
                if cw == w:
                    out[f"t{t}_d{d}_w{w}"] = float(acc[d - 1, grans.index(t)])
    model.train()
    return {k: out[k] for k in ["full", *(f"t{t}_d{d}_w{w}" for t, d, w in configs)] if k in out}


def train_run(name: str, steps: int, evals: list[int], seed: int, data, configs, overrides=None, warmup: int = 100,
              batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 0.05, grad_clip: float = 3.0,
              patch_size: int = 4, objective_overrides: dict | None = None, vit_overrides: dict | None = None,
              decay_all: bool = False):
    """Train one model for ``steps`` steps; yield ``(step, accuracies, train_seconds)`` at each evaluation."""
    xtr, ytr, xv, yv = data
    torch.manual_seed(seed)
    model, objective = build(name, overrides, xtr.shape[-1], patch_size, vit_overrides)
    model.train()
    groups = model.parameters() if decay_all else param_groups(list(model.named_parameters()), weight_decay)
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup, 0.0))
    joint = JointObjective(ObjectiveConfig(**(objective_overrides or {}))) if objective == "joint" else None
    per_epoch = len(xtr) // batch_size
    train_s, perm = 0.0, None
    for step in range(steps):
        epoch, b = divmod(step, per_epoch)
        if b == 0:
            perm = epoch_permutation(len(xtr), seed, epoch)
        idx = perm[b * batch_size:(b + 1) * batch_size]
        x, y = xtr[idx], ytr[idx]
        t0 = time.perf_counter()
        if joint is None:
            loss = F.cross_entropy(model(x), y)
        else:
            loss, _ = joint(model, Batch(x, y), step_generator(seed, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        train_s += time.perf_counter() - t0
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError(f"{name}: loss is {float(loss.detach())} at step {step}")
        if step + 1 in evals or step + 1 == steps:
            yield step + 1, evaluate(model, xv, yv, configs), train_s, sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vit,adaperceiver_tiny,adaperceiver_tiny_v2")
    p.add_argument("--steps", default="700", help="run lengths, comma-separated (each its own cosine schedule)")
    p.add_argument("--evals", default="", help="extra evaluation steps inside each run, comma-separated")
    p.add_argument("--seeds", default="0")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="sub-configurations tokens,depth,width;... evaluated for adaptive models")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of the adaptive models (JSON values), e.g. --set head_norm=true")
    p.add_argument("--vit-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ViTConfig field of the vit entries, e.g. --vit-set init=torch")
    p.add_argument("--decay-all", action="store_true", help="weight decay on every parameter (biases, norms too)")
    p.add_argument("--objective", action="append", default=[], metavar="KEY=VALUE",
                   help="override a joint-objective field (JSON values), e.g. --objective token_weights=[1,1,1,3]")
    p.add_argument("--dataset", default="fashion_mnist",
                   help="any grey 10-class dataset name, e.g. fashion_mnist_cluttered (held in memory)")
    p.add_argument("--patch-size", type=int, default=4, help="patch size of every model (8 for 64 px canvases)")
    p.add_argument("--val-subset", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--csv", default="bench_learning.csv", help="evaluations are appended here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = parse_configs(args.configs)
    overrides = dict(parse_override(item) for item in args.set)
    vit_overrides = dict(parse_override(item) for item in args.vit_set)
    objective_overrides = {k: tuple(v) if isinstance(v, list) else v
                           for k, v in (parse_override(item) for item in args.objective)}
    try:
        ObjectiveConfig(**objective_overrides)
    except (TypeError, ValueError) as e:
        p.error(f"--objective: {e}")
    data = (*as_tensors(get_dataset(args.dataset, "train")),
            *as_tensors(get_dataset(args.dataset, "val", subset=args.val_subset)))
    models = [m for m in args.models.split(",") if m]
    for m in models:
        build(m, overrides, data[0].shape[-1], args.patch_size, vit_overrides)  # fail early on a bad entry
    rows: list[dict] = []
    path = Path(args.csv)
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for steps in (int(s) for s in args.steps.split(",")):
            evals = sorted({int(s) for s in args.evals.split(",") if s and int(s) < steps} | {steps})
            table: dict[tuple[str, int], dict[str, float]] = {}
            for seed in (int(s) for s in args.seeds.split(",")):
                for name in models:
                    preset, _, objective = name.partition(":")
                    for step, accs, train_s, params in train_run(name, steps, evals, seed, data, configs, overrides,
                                                                     patch_size=args.patch_size,
                                                                     objective_overrides=objective_overrides,
                                                                     vit_overrides=vit_overrides,
                                                                     decay_all=args.decay_all):
                        for config, acc in accs.items():
                            tweaks = objective_overrides if objective == "joint" else {}
                            tags = {**overrides, **vit_overrides, **({"decay": "all"} if args.decay_all else {})}
                            row = dict(model=preset + "".join(f" {k}={v}" for k, v in tags.items()),
                                       objective=(objective or "plain") + "".join(f" {k}={v}" for k, v in tweaks.items()),
                                       run_steps=steps, step=step,
                                       seed=seed, params=params, config=config, val_acc1=round(acc, 2),
                                       train_s=round(train_s, 1), ms_per_step=round(1000 * train_s / step, 1),
                                       threads=args.threads, torch=torch.__version__)
                            writer.writerow(row)
                            rows.append(row)
                            table.setdefault((name, step), {}).setdefault(config, []).append(acc)
                        fh.flush()
                        label = f"{name} {overrides}" if overrides else name
                        print(f"  {label} seed {seed} step {step}/{steps}: full {accs['full']:.2f}%  "
                              f"({1000 * train_s / step:.0f} ms/step)", flush=True)
            print(f"\n{args.dataset}, run length {steps} steps, val top-1 % (mean over seeds {args.seeds}), "
                  f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
            print("| step | " + " | ".join(models) + " |")
            print("|---" * (len(models) + 1) + "|")
            for step in evals:
                cells = []
                for name in models:
                    accs = table.get((name, step), {})
                    full = sum(accs["full"]) / len(accs["full"]) if "full" in accs else float("nan")
                    subs = [f"{k} {sum(v) / len(v):.1f}" for k, v in accs.items() if k != "full"]
                    cells.append(f"**{full:.2f}**" + (f" ({', '.join(subs)})" if subs else ""))
                print(f"| {step} | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    main()
