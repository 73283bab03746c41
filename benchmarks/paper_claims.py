"""The paper's claims in miniature: the adaptive model against the ViT family and FlexiViT, trained the same way.

For each task (``fmnist28``: Fashion-MNIST 28 px; ``count64`` and ``odd64``: :mod:`adaperceiver.data.counting`, 64 px;
``odd64x13`` / ``odd64x16``, with 13 / 16 items, only when named in ``--tasks``: the spread probes)
and each model (``adaperceiver_tiny``, ``vit_tiny``, ``vit_tiny_x2``, ``vit_tiny_x4``, FlexiViT):

1. **tuning**: the same learning-rate x weight-decay grid for every model, each point trained (first seed)
   on training items that exclude a held-out split (the last ``--holdout`` items of a fixed shuffle of the
   training set) and scored on that split at the model's full setting; the best point is kept (recorded);
2. **training**: with the chosen values, one run per further seed on the same items (the same for every
   model), the library's ``Trainer`` (same data, no augmentation, batch 128, warm-up then cosine to 0, no
   EMA, grad clip 3); adaptive models with the joint objective, peers with the static one;
3. **evaluation**: accuracy of every setting on the test split (``evaluation.sweep.evaluate_grid``),
   FLOPs per image (``evaluation.cost.measure_flops``), batch-1 latency and batch-256 throughput
   (``evaluation.cost.measure_latency``) of every setting on the accuracy-vs-FLOPs front, fp32 eager
   (``--fast`` adds bf16 + ``torch.compile`` through ``for_inference`` for models that have it).

``--dense`` adds the dense claim (``benchmarks/paper_claims_dense.py``: one adaptive dense model against the
``ViTDense`` family on derived segmentation and depth scenes). Each (task, model) result is a JSON file under
``--out``; a rerun skips the finished ones (resumable per model). Then ``docs/paper_claims.md`` (``--doc``),
one CSV and one plot per task are written. Run it under the benchmark lock::

    flock /work/heavy.lock python benchmarks/paper_claims.py --quick          # minutes: the plumbing
    flock /work/heavy.lock python benchmarks/paper_claims.py --fast --dense   # the measurement (hours)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import paper_claims_dense  # noqa: E402  (beside this script)
import torch
from matplotlib.ticker import NullFormatter
from torch.utils.data import DataLoader, Subset

from adaperceiver.adapt.policy import (
    PolicyConfig,
    PolicyTrainConfig,
    collect_outcomes,
    configuration_flops,
    evaluate_comparators,
    train_policy,
)
from adaperceiver.checkpoint import from_pretrained
from adaperceiver.data import get_dataset
from adaperceiver.evaluation.cost import measure_flops, measure_latency
from adaperceiver.evaluation.reports import new_figure, save_figure, write_csv
from adaperceiver.evaluation.sweep import evaluate_grid, pareto_front
from adaperceiver.models import create_model
from adaperceiver.tasks import get_task
from adaperceiver.training import ObjectiveConfig, TrainConfig, Trainer
from adaperceiver.training.config import TaskData

ROOT = Path(__file__).resolve().parents[1]
ADAPTIVE = "adaperceiver_tiny"
TASKS = {  # dataset, model overrides of every model, FlexiViT preset
    "fmnist28": ("fashion_mnist", {}, "flexivit_tiny"),
    "count64": ("fashion_mnist_count64", {"img_size": 64, "patch_size": 8}, "flexivit_tiny64"),
    "odd64": ("fashion_mnist_odd64", {"img_size": 64, "patch_size": 8}, "flexivit_tiny64"),
    "odd64x13": ("fashion_mnist_odd64x13", {"img_size": 64, "patch_size": 8}, "flexivit_tiny64"),
    "odd64x16": ("fashion_mnist_odd64x16", {"img_size": 64, "patch_size": 8}, "flexivit_tiny64"),
}
DEFAULT_TASKS = ("fmnist28", "count64", "odd64")  # odd64x13 / x16: the spread probes of docs/paper_claims/notes.md
PEERS = ("vit_tiny", "vit_tiny_x2", "vit_tiny_x4")


def models_of(task: str) -> list[str]:
    return [ADAPTIVE, PEERS[0], TASKS[task][2], *PEERS[1:]]  # cheapest runs first


def build(name: str, task: str, num_classes: int) -> torch.nn.Module:
    overrides = dict(TASKS[task][1], num_classes=num_classes, in_chans=1)
    if name.startswith("flexivit"):
        overrides = {k: v for k, v in overrides.items() if k != "patch_size"}  # the preset names its patch sizes
    return create_model(name, **overrides)


def split_data(task: str, train_items: int, holdout: int) -> TaskData:
    """``train_items`` of a fixed shuffle of the training split to train on, its last ``holdout`` items to tune on."""
    train = get_dataset(TASKS[task][0], "train")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    if train_items + holdout > len(train):
        raise ValueError(f"{train_items} training + {holdout} held-out items exceed the {len(train)} of {task}")
    dc = getattr(train, "data_config", None)  # recorded in the run, so its model predicts without guessing
    return TaskData(Subset(train, order[:train_items]), Subset(train, order[-holdout:]), len(train.classes),
                    train.in_chans, train.img_size, tuple(train.classes), {"data_config": dc.to_dict()} if dc else {})


def steps_of(task: str, args) -> int:
    return args.steps.get(task, args.steps.get("*", 700))


def train_one(task: str, name: str, lr: float, wd: float, seed: int, args, run_dir: Path):
    """One run of the library trainer on the training items; returns ``(model, held-out loader, seconds)``."""
    steps = steps_of(task, args)
    epochs = max(1, math.ceil(steps * args.batch_size / (60000 - args.holdout)))
    items = steps * args.batch_size // epochs
    data = split_data(task, items, args.holdout)
    adaptive = name == ADAPTIVE
    cfg = TrainConfig(model=name, dataset=TASKS[task][0], epochs=epochs, batch_size=args.batch_size, lr=lr,
                      min_lr=0.0, weight_decay=wd, warmup_steps=min(100, steps // 5), grad_clip=3.0,
                      ema_decay=0.0, augment=False, seed=seed, eval_every=0, progress=False,
                      objective=ObjectiveConfig() if adaptive else ObjectiveConfig.static(),
                      out_dir=str(run_dir.parent), name=run_dir.name, log_every=50)
    torch.manual_seed(seed)
    trainer = Trainer(cfg, get_task("classification"), data=data, model=build(name, task, data.num_classes))
    result = trainer.fit(resume=True)
    return result.model, trainer.val_loader(), result.train_seconds


def accuracies(model, loader) -> dict[tuple[int, int, int], float]:
    results, *_ = evaluate_grid(model, loader, progress=False)
    return {(c.tokens, c.depth, c.width): r["acc1"] for c, r in results.items()}


def timings(model, settings, fast: bool, repeats: int) -> dict[str, dict]:
    """Batch-1 latency (ms) and batch-256 throughput (img/s) of each setting, fp32 eager (+ bf16 compiled)."""
    out: dict[str, dict] = {}
    modes = [("fp32", model)]
    if fast:  # every model here has for_inference (peers: PeerInference), so all are timed in the same mode
        modes.append(("bf16c", model.for_inference(torch.bfloat16, compile=True)))
    for mode, m in modes:
        for t, d, w in settings:
            b1 = measure_latency(m, (t, d, w), 1, repeats=repeats * 3, warmup=3)
            b256 = measure_latency(m, (t, d, w), 256, repeats=repeats, warmup=2)
            out[f"{mode}/{t},{d},{w}"] = {"latency_ms_b1": b1.median_ms, "throughput_b256": b256.throughput}
    return out


def run_model(task: str, name: str, args) -> dict[str, Any]:
    """Tune, train every seed, evaluate; the (task, model) record (also written to OUT/task/name.json)."""
    path = Path(args.out) / task / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    test = DataLoader(get_dataset(TASKS[task][0], "val", subset=args.val_items), batch_size=256)
    # every grid point trains seed 0 on the same items; the held-out split picks the point, whose
    # seed-0 model is then scored on the test split like the other seeds' models
    grid, tested = [], {}
    for lr in args.lrs:
        for wd in args.wds:
            run = Path(args.out) / task / "runs" / f"{name}_lr{lr:g}_wd{wd:g}_seed{args.seeds[0]}"
            model, holdout, secs = train_one(task, name, lr, wd, args.seeds[0], args, run)
            acc = accuracies(model, holdout)
            full = max(acc)  # the most tokens, blocks and width: the full setting
            grid.append({"lr": lr, "wd": wd, "holdout_acc1": round(acc[full], 2)})
            tested[(lr, wd)] = (accuracies(model, test), secs, model)
            print(f"  {task} {name} lr {lr:g} wd {wd:g}: held-out {acc[full]:.2f}%", flush=True)
    best = max(grid, key=lambda g: g["holdout_acc1"])
    first, secs, model = tested[(best["lr"], best["wd"])]
    per_seed, train_s = [first], [secs]
    for seed in args.seeds[1:]:
        run = Path(args.out) / task / "runs" / f"{name}_lr{best['lr']:g}_wd{best['wd']:g}_seed{seed}"
        model, _, secs = train_one(task, name, best["lr"], best["wd"], seed, args, run)
        per_seed.append(accuracies(model, test))
        train_s.append(secs)
    settings = sorted(per_seed[0])
    acc = {s: sum(p[s] for p in per_seed) / len(per_seed) for s in settings}
    flops = {s: measure_flops(model, s) for s in settings}
    front = [s for s, on in zip(settings, pareto_front([(flops[s], acc[s]) for s in settings])) if on]
    torch.manual_seed(0)
    times = timings(model.eval(), front, args.fast, args.repeats)
    rows = [{"task": task, "model": name, "tokens": s[0], "depth": s[1], "width": s[2],
             "acc1": round(acc[s], 3), **{f"acc1_seed{sd}": p[s] for sd, p in zip(args.seeds, per_seed)},
             "mflops": flops[s] / 1e6, "front": s in front,
             **{f"{k}_{m}": v for m in ("fp32", "bf16c") for k, v in times.get(f"{m}/{s[0]},{s[1]},{s[2]}", {}).items()},
             "lr": best["lr"], "wd": best["wd"]} for s in settings]
    record = {"task": task, "model": name, "grid": grid, "chosen": best, "rows": rows, "train_seconds": train_s,
              "steps": steps_of(task, args), "repeats": args.repeats, "seeds": args.seeds,
              "wall_s": time.perf_counter() - t0, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def run_policy(task: str, seed: int, args) -> dict[str, Any] | None:
    """The learned policy vs confidence early exit vs the fixed settings on the adaptive model of one seed.

    Policies (one per ``--policy-lams``) learn on the held-out split (images the backbone did not train on)
    with FLOPs as the cost; every method is scored on the test split and timed at batch 1 and 64 over
    the first ``--policy-latency-images`` test images, fp32 eager (``adapt.policy.evaluate_comparators``).
    """
    path = Path(args.out) / task / f"policy_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    rec_path = Path(args.out) / task / f"{ADAPTIVE}.json"
    if not rec_path.exists():
        return None
    chosen = json.loads(rec_path.read_text())["chosen"]
    run = Path(args.out) / task / "runs" / f"{ADAPTIVE}_lr{chosen['lr']:g}_wd{chosen['wd']:g}_seed{seed}"
    if not (run / "model.safetensors").exists():
        return None
    model = from_pretrained(run).eval()
    data = split_data(task, 1, args.holdout)
    learn = collect_outcomes(model, data.val)
    cost = configuration_flops(model, learn.space)
    policies = {}
    for lam in args.policy_lams:
        cfg = PolicyTrainConfig(lam=lam, epochs=args.policy_epochs, seed=seed)
        policies[f"lam={lam:g}"] = train_policy(model, learn, cost, cfg, PolicyConfig(num_blocks=0))
    test = collect_outcomes(model, get_dataset(TASKS[task][0], "val", subset=args.val_items), learn.space)
    result = evaluate_comparators(model, test, cost, policies, taus=args.policy_taus, latency_batch_sizes=(1, 64),
                                  latency_images=args.policy_latency_images)
    record = {"task": task, "seed": seed, "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
              "lams": args.policy_lams, "taus": args.policy_taus, "epochs": args.policy_epochs,
              "latency_images": args.policy_latency_images, **result, "machine": machine()}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def saved_at_parity(rec: dict, method: str) -> tuple[float, float, float] | None:
    """The cheapest ``method`` row within 0.1 pp of the full setting: % FLOPs, % batch-1 and % batch-64 time saved."""
    hit = rec["summary"].get(f"parity_{method}")
    if not hit:
        return None
    rows = rec["rows"]
    full = next(r for r in rows if r["method"] == "full")
    row = next(r for r in rows if r["method"] == method and r["setting"] == hit["setting"])
    return (hit["flops_saved_pct"], *(100 * (1 - row[f"latency_ms_b{b}"] / full[f"latency_ms_b{b}"]) for b in (1, 64)))


def describe_saving(v: tuple[float, float, float] | None) -> str:
    return "none at parity" if v is None else f"FLOPs {-v[0]:+.1f} %, time b1 {-v[1]:+.1f} %, b64 {-v[2]:+.1f} %"


def policy_claim(recs: list[dict]) -> tuple[str, str, str, str]:
    """Per seed: the cheapest learned policy and the cheapest early exit within 0.1 pp of full accuracy;
    the claim needs the policy to save >= 24 % FLOPs and >= 15 % time at both batch sizes, and to be no
    worse than early exit (FLOPs saved)."""
    parts, ok = [], True
    for rec in recs:
        pol, ee = saved_at_parity(rec, "policy"), saved_at_parity(rec, "early_exit")
        parts.append(f"seed {rec['seed']}: policy {describe_saving(pol)}; early exit {describe_saving(ee)}")
        ok &= pol is not None and pol[0] >= 24 and min(pol[1:]) >= 15 and (ee is None or pol[0] >= ee[0])
    return ("policy within +-0.1 pp of full at >= 24 % fewer FLOPs, >= 15 % less wall-clock (batch 1 and 64), "
            "and at least as good as early exit", "; ".join(parts), "-", "HOLDS" if ok else "MISSED")


def retime(task: str, name: str, args) -> dict[str, Any] | None:
    """Count FLOPs (as deployed: ``measure_flops``) and time a finished (task, model) record's front again (its last seed's
    weights, ``--repeats``, ``--fast``), so that every model of a task is timed back to back under the same
    conditions; rewrites its JSON."""
    path = Path(args.out) / task / f"{name}.json"
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    lr, wd = rec["chosen"]["lr"], rec["chosen"]["wd"]
    model = from_pretrained(Path(args.out) / task / "runs" / f"{name}_lr{lr:g}_wd{wd:g}_seed{rec['seeds'][-1]}").eval()
    for r in rec["rows"]:  # FLOPs as deployed (0.2 counted a FlexiViT's per-call kernel resize), and the front
        r["mflops"] = measure_flops(model, (r["tokens"], r["depth"], r["width"])) / 1e6
    on = pareto_front([(r["mflops"], r["acc1"]) for r in rec["rows"]])
    for r, f in zip(rec["rows"], on):
        r["front"] = f
    front = [(r["tokens"], r["depth"], r["width"]) for r in rec["rows"] if r["front"]]
    torch.manual_seed(0)
    times = timings(model, front, args.fast, args.repeats)
    for r in rec["rows"]:
        for k in [k for k in r if k.startswith(("latency_ms_", "throughput_"))]:
            del r[k]
        for m in ("fp32", "bf16c"):
            r.update({f"{k}_{m}": v for k, v in times.get(f"{m}/{r['tokens']},{r['depth']},{r['width']}", {}).items()})
    rec.update(repeats=args.repeats, machine=machine(), retimed=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def machine() -> dict[str, Any]:
    """The CPU model (lscpu), its bf16 matrix units and the load average where the timings were taken."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        lines = []
    info = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    flags = info.get("Flags", "").split()
    return {"cpu": info.get("Model name", "unknown"), "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "load_avg": [round(v, 2) for v in os.getloadavg()], "threads": torch.get_num_threads(),
            "torch": torch.__version__}


# --------------------------------------------------------------------------------------------------
# the claims
def speed_at_equal_accuracy(rows: list[dict], key: str) -> list[dict]:
    """At each peer front point's accuracy: the adaptive model's and the best peer's best ``key``
    (higher is better) among the points at least that accurate."""
    ours = [r for r in rows if r["model"] == ADAPTIVE and r.get(key) is not None]
    peers = [r for r in rows if r["model"] != ADAPTIVE and r.get(key) is not None]
    out = []
    for level in sorted({r["acc1"] for r in peers}):
        o = [r[key] for r in ours if r["acc1"] >= level]
        p = [r[key] for r in peers if r["acc1"] >= level]
        if o and p:
            out.append({"acc1": level, "ours": max(o), "peer": max(p), "ratio": max(o) / max(p)})
    return out


def plot_task(task: str, rows: list[dict], path: Path) -> None:
    panels = [("mflops", "MFLOPs per image"), ("throughput_b256_fp32", "images/s, batch 256, fp32 eager"),
              ("latency_ms_b1_fp32", "ms, batch 1, fp32 eager")]
    if any(r.get("throughput_b256_bf16c") for r in rows):
        panels += [("throughput_b256_bf16c", "images/s, batch 256, bf16 + compile"),
                   ("latency_ms_b1_bf16c", "ms, batch 1, bf16 + compile")]
    fig = new_figure(figsize=(15, 4.2 * ((len(panels) + 2) // 3)))
    axes = fig.subplots((len(panels) + 2) // 3, 3).flatten()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (key, label) in zip(axes, panels):
        for name in sorted({r["model"] for r in rows}):
            pts = sorted((r[key], r["acc1"]) for r in rows if r["model"] == name and r.get(key) is not None
                         and (key == "mflops" or r["front"]))
            if pts:
                ax.plot(*zip(*pts), "o-" if len(pts) > 1 else "s", label=name, ms=4)
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 %")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels collide on a short range
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{task}: accuracy vs cost (every setting vs FLOPs; the FLOPs front vs time)")
    save_figure(fig, path)


def task_command(task: str, recs: list[dict]) -> str:
    """The command that measured a task's records (from what they record: steps, seeds, grid, modes)."""
    rec = recs[0]
    lrs = ",".join(sorted({f"{g['lr']:g}" for g in rec["grid"]}, key=float))
    wds = ",".join(sorted({f"{g['wd']:g}" for g in rec["grid"]}, key=float))
    fast = any(r.get("throughput_b256_bf16c") for r in rec["rows"])
    base = (f"flock /work/heavy.lock python benchmarks/paper_claims.py --tasks {task} --steps {rec['steps']} "
            f"--seeds {','.join(map(str, rec['seeds']))} --lrs {lrs} --wds {wds}{' --fast' if fast else ''}")
    if rec.get("retimed"):  # trained and evaluated by the first command, timed by the second
        return f"{base}`, then `{base} --retime --repeats {rec['repeats']}"
    return f"{base} --repeats {rec.get('repeats', 3)}"


def write_doc(records: dict[str, list[dict]], args, doc: Path) -> None:
    lines = ["# The paper's claims, measured in miniature", "",
             f"Written by `python benchmarks/paper_claims.py {' '.join(args.argv)}` from the per-model results of the "
             "commands named in each task's section (every number below is a row of the CSVs beside this file).", ""]
    claim_rows = []
    for task, recs in records.items():
        rows = [r for rec in recs for r in rec["rows"]]
        m = recs[0]["machine"] if recs else {}
        write_csv(rows, doc.parent / "paper_claims" / f"{task}.csv")
        plot_task(task, rows, doc.parent / "paper_claims" / f"{task}.png")
        lines += [f"## {task}", "", f"Measured by `{task_command(task, recs)}`.", "", f"![{task}](paper_claims/{task}.png)", "",
                  f"CSV: [paper_claims/{task}.csv](paper_claims/{task}.csv). Timings on {m.get('cpu')} "
                  f"(AMX: {m.get('amx')}, AVX-512-bf16: {m.get('avx512_bf16')}), {m.get('threads')} threads, load "
                  f"average {m.get('load_avg')} at the end of the first model's record, torch {m.get('torch')}.", "",
                  "| model | steps | seeds | chosen lr / wd | held-out grid (lr, wd: %) | settings | full-setting test % "
                  "| cheapest % | MFLOPs (full) | train s / seed |", "|---|---|---|---|---|---|---|---|---|---|"]
        for rec in recs:
            r = rec["rows"]
            full, cheap = max(r, key=lambda x: x["mflops"]), min(r, key=lambda x: x["mflops"])
            grid = "; ".join(f"{g['lr']:g}, {g['wd']:g}: {g['holdout_acc1']}" for g in rec["grid"])
            seeds = ", ".join(map(str, rec["seeds"]))
            chosen = f"{rec['chosen']['lr']:g} / {rec['chosen']['wd']:g}"
            lines.append(f"| {rec['model']} | {rec['steps']} | {seeds} | {chosen} | {grid} | {len(r)} | "
                         f"{full['acc1']:.2f} | {cheap['acc1']:.2f} | {full['mflops']:.2f} | "
                         f"{', '.join(f'{s:.0f}' for s in rec['train_seconds'])} |")
        lines.append("")
        one_seed = " (provisional: one seed)" if any(len(rec["seeds"]) < 2 for rec in recs) else ""
        ours = [r for r in rows if r["model"] == ADAPTIVE]
        if ours:
            full, cheap = max(ours, key=lambda x: x["mflops"]), min(ours, key=lambda x: x["mflops"])
            spread = full["acc1"] - cheap["acc1"]
            claim_rows.append((f"{task}: the settings differ (full minus cheapest >= 8 pp)", f"{spread:+.2f} pp",
                               "-", "HOLDS" if spread >= 8 else "MISSED"))
        for key, what, goal in (("throughput_b256_fp32", "throughput at batch 256 (fp32 eager)", 1.3),
                                ("latency_ms_b1_fp32", "batch-1 speed (1 / latency, fp32 eager)", 1.0),
                                ("throughput_b256_bf16c", "throughput at batch 256 (bf16 + compile)", 1.3),
                                ("latency_ms_b1_bf16c", "batch-1 speed (1 / latency, bf16 + compile)", 1.0)):
            if "bf16c" in key and not any(r.get(key) for r in rows):
                continue
            if key.startswith("latency"):
                speed = key.replace("latency_ms_b1", "speed_b1")
                for r in rows:
                    if r.get(key):
                        r[speed] = 1000.0 / r[key]
                key = speed
            cmp = speed_at_equal_accuracy(rows, key)
            timed_peers = [r["acc1"] for r in rows if r["model"] != ADAPTIVE and r.get(key) is not None]
            if not cmp and ours and timed_peers:  # both ran: no peer point is as inaccurate as our best
                best = max(r["acc1"] for r in ours)
                claim_rows.append((f"{task}: {what}, adaptive vs the best peer at equal accuracy",
                                   f"best adaptive setting {best:.2f} %", f"every peer front point is more accurate "
                                   f"(least: {min(timed_peers):.2f} %)", "MISSED (the adaptive front is dominated)"))
            elif not cmp:
                claim_rows.append((f"{task}: {what}, adaptive vs the best peer at equal accuracy", "-", "-",
                                   "NOT RUN (the adaptive model and at least one peer must both have finished)"))
            else:
                lines += [f"{task}, {what} at equal accuracy (adaptive / best peer at or above each peer accuracy): "
                          + ", ".join(f"{c['acc1']:.2f} %: {c['ratio']:.2f}x" for c in cmp), ""]
                n_ok = sum(c["ratio"] >= goal for c in cmp)
                need = 2 if goal > 1 else len(cmp)
                run = ", ".join(sorted({r["model"] for r in rows if r["model"] != ADAPTIVE}))
                claim_rows.append((f"{task}: {what}, adaptive >= {goal}x the best peer ({run}) at equal accuracy "
                                   f"({'at >= 2 levels' if goal > 1 else 'at every level'})",
                                   f"{n_ok} of {len(cmp)} levels", ", ".join(f"{c['ratio']:.2f}x" for c in cmp),
                                   ("HOLDS" + one_seed) if n_ok >= need else "MISSED"))
    for task in args.tasks_run:
        if not records.get(task):
            claim_rows.append((f"{task}: settings spread, throughput and batch-1 speed vs the peers", "-", "-",
                               "NOT RUN (no model of this task finished within the CPU budget)"))
    table = ["## Claims", "", "| claim | our measurement | ratios vs best peer | verdict |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in claim_rows]
    if not any(r.get("throughput_b256_bf16c") for recs in records.values() for rec in recs for r in rec["rows"]):
        table += ["| bf16 + compile (the paper's fastest mode) | - | - | NOT RUN (--fast not given) |"]
    for task in args.tasks_run:
        recs = [r for r in (args.policy_records or {}).get(task, []) if r]
        if recs:  # every method's row of every seed, beside the fronts
            write_csv([{"seed": rec["seed"], **row} for rec in recs for row in rec["rows"]],
                      doc.parent / "paper_claims" / f"{task}_policy.csv")
            claim_rows_p = policy_claim(recs)
            table += [f"| {task}: {claim_rows_p[0]} | {claim_rows_p[1]} | [{task}_policy.csv](paper_claims/{task}_policy.csv) "
                      f"| {claim_rows_p[3]} |"]
    policy_recs = [r for recs in (args.policy_records or {}).values() for r in recs if r]
    if policy_recs:
        r = policy_recs[0]
        lat = r.get("latency_images", r["summary"].get("latency_images"))
        table += ["", f"Policy rows: `flock /work/heavy.lock python benchmarks/paper_claims.py --tasks "
                      f"{','.join(sorted({x['task'] for x in policy_recs}))} --seeds "
                      f"{','.join(str(s) for s in sorted({x['seed'] for x in policy_recs}))} --policy --policy-lams "
                      f"{','.join(f'{v:g}' for v in r['lams'])} --policy-taus {','.join(f'{v:g}' for v in r['taus'])} "
                      f"--policy-latency-images {lat}` (policy epochs {r.get('epochs', 20)})."]
    else:
        table += ["| policy within +-0.1 pp of full at >= 24 % fewer FLOPs, >= 15 % less wall-clock | - | - | "
                  "NOT RUN (--policy not given) |"]
    dense_records = paper_claims_dense.load(Path(args.out))  # every finished dense record, run now or before
    table += ["", "| claim (dense) | our measurement | the ViTs' full setting (metric @ encoder MFLOPs) | verdict |",
              "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in paper_claims_dense.claims(dense_records)] + [""]
    lines += paper_claims_dense.doc_section(dense_records, doc.parent / "paper_claims")
    extra = doc.parent / "paper_claims" / "notes.md"  # hand-written measurements (baseline strength)
    doc.parent.mkdir(parents=True, exist_ok=True)
    notes = extra.read_text() if extra.exists() else None
    if notes is not None:  # the notes link their files relative to their own folder; the doc sits one level up
        notes = re.sub(r"\]\((?![a-z]+:|/|#)([^)]+)\)", lambda m: f"]({extra.parent.name}/{m.group(1)})", notes)
    body = lines[:4] + table + lines[4:] + ([notes] if notes is not None else [])
    doc.write_text("\n".join(body) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a run of minutes: 12 steps, one seed, one grid point")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated, of {sorted(TASKS)} "
                   f"(default: {','.join(DEFAULT_TASKS)})")
    p.add_argument("--models", default="", help="comma-separated subset of the models (default: all)")
    p.add_argument("--steps", default="fmnist28=700,count64=1500,odd64=1500",
                   help="training steps: one number for every task, or TASK=N pairs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lrs", default="1e-3,3e-3")
    p.add_argument("--wds", default="0.05")
    p.add_argument("--holdout", type=int, default=5000, help="held-out training items for tuning")
    p.add_argument("--val-items", type=int, default=None, help="test items evaluated (default all)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls at batch 256 (3x at batch 1)")
    p.add_argument("--fast", action="store_true", help="also time bf16 + torch.compile (for_inference) where supported")
    p.add_argument("--policy", action="store_true", help="also compare the learned policy with early exit "
                   "(adaptive model of each seed)")
    p.add_argument("--policy-lams", default="0.05,0.1,0.2,0.4")
    p.add_argument("--policy-taus", default="0.5,0.7,0.8,0.9,0.95,0.99")
    p.add_argument("--policy-epochs", type=int, default=20)
    p.add_argument("--policy-latency-images", type=int, default=128)
    p.add_argument("--retime", action="store_true", help="only time the finished models' fronts again, back to back")
    p.add_argument("--dense", action="store_true", help="also the dense claim: adaptive dense model vs ViTDense family "
                   "on derived scenes (segmentation and depth; benchmarks/paper_claims_dense.py)")
    p.add_argument("--dense-models", default="", help="comma-separated subset of the dense models (default: all)")
    p.add_argument("--dense-steps", type=int, default=1000)
    p.add_argument("--dense-batch-size", type=int, default=64)
    p.add_argument("--dense-lr", type=float, default=2e-3)
    p.add_argument("--dense-wd", type=float, default=0.05)
    p.add_argument("--dense-val-items", type=int, default=1000, help="validation scenes evaluated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "paper_claims"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "paper_claims.md"))
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    if args.quick:
        args.steps, args.seeds, args.lrs, args.wds, args.val_items, args.repeats = 12, "0", "2e-3", "0.05", 500, 2
        args.holdout = 1000
        args.dense_steps, args.dense_val_items = 12, 200
        args.out = str(Path(args.out).with_name(Path(args.out).name + "_quick"))
        args.doc = str(Path(args.out) / "paper_claims.md")
    args.steps = {k if v else "*": int(v or k) for k, _, v in (item.partition("=") for item in str(args.steps).split(","))}
    args.seeds = [int(s) for s in str(args.seeds).split(",")]
    args.lrs = [float(v) for v in str(args.lrs).split(",")]
    args.policy_lams = [float(v) for v in str(args.policy_lams).split(",")]
    args.policy_taus = [float(v) for v in str(args.policy_taus).split(",")]
    args.wds = [float(v) for v in str(args.wds).split(",")]
    torch.set_num_threads(args.threads)
    args.dense_models = [m for m in args.dense_models.split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        p.error(f"--tasks: unknown {bad}; known {sorted(TASKS)}")
    wanted = {m for m in args.models.split(",") if m}
    records: dict[str, list[dict]] = {}
    for task in tasks:
        records[task] = []
        for name in models_of(task):
            if wanted and name not in wanted and not (Path(args.out) / task / f"{name}.json").exists():
                continue
            if args.retime:
                print(f"{task} / {name}: timing again ...", flush=True)
                rec = retime(task, name, args)
                records[task] += [rec] if rec else []
                continue
            print(f"{task} / {name} ...", flush=True)
            records[task].append(run_model(task, name, args))
    args.policy_records = {}
    for task in tasks:
        if args.policy:
            for seed in args.seeds:
                print(f"{task} / policy seed {seed} ...", flush=True)
                args.policy_records.setdefault(task, []).append(run_policy(task, seed, args))
        else:  # earlier policy results are kept in the document
            found = [json.loads(f.read_text()) for f in sorted((Path(args.out) / task).glob("policy_seed*.json"))]
            args.policy_records[task] = found
    args.tasks_run = tasks
    if args.dense:
        paper_claims_dense.run(args, machine)
    write_doc({t: r for t, r in records.items() if r}, args, Path(args.doc))
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
