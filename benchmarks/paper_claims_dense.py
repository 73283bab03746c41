"""The paper's dense claim in miniature: one adaptive dense model against a plain-ViT family under the same head.

Task data: :class:`adaperceiver.data.dense.FashionMNISTScene` (derived from real Fashion-MNIST pixels):
64 px views of 2-3 items standing at depths that set their size and occlusion order, with per-pixel
class labels (``scene_seg``, 11 classes) or depth (``scene_depth``, 1-3 for items, 4 for the wall).

Models: ``adaperceiver_tiny64`` as a dense backbone (joint objective: every depth x token read-out, one
width per sample) and ``vit_tiny`` / ``vit_tiny_x2`` / ``vit_tiny_x4`` as :class:`~adaperceiver.models.vit.ViTDense`
(patch 8, static objective), all with the same head (segmentation: the library's head; depth: 64 bins on
the patch grid, ``upsample=1``, so the 16 read-outs of the joint objective fit the CPU budget), trained by the
library's ``Trainer`` for the same steps, batch, lr and weight decay (one value, untuned, for every model).

Measured: every setting's metric on held-out scenes built from the Fashion-MNIST test images
(``evaluation.sweep.evaluate_grid``), encoder FLOPs per image (``evaluation.reports.encoder_gflops``: the
backbone with its per-patch write-out, head excluded, as the paper counts), batch-1 latency and batch-64
throughput of the whole model in fp32 eager for the settings on the FLOPs front; for depth also the
mean-depth predictor (the training scenes' mean depth everywhere).

Called by ``benchmarks/paper_claims.py --dense`` (results in ``OUT/scene_seg/*.json``, resumable per model);
:func:`claims` and :func:`doc_section` give that script's document its dense rows and section.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.ticker import NullFormatter
from torch.utils.data import DataLoader

from adaperceiver.data.dense import FashionMNISTScene
from adaperceiver.evaluation.cost import measure_latency
from adaperceiver.evaluation.metrics import get_metric
from adaperceiver.evaluation.reports import encoder_gflops, new_figure, save_figure, write_csv
from adaperceiver.evaluation.sweep import evaluate_grid, pareto_front
from adaperceiver.tasks import get_task
from adaperceiver.training import ObjectiveConfig, TrainConfig, Trainer

ADAPTIVE = "adaperceiver_tiny64"
VITS = ("vit_tiny", "vit_tiny_x2", "vit_tiny_x4")
MODELS = (ADAPTIVE, *VITS)
DENSE_TASKS = {  # library task, primary metric, higher is better, model overrides (head.* go to the head)
    "scene_seg": ("segmentation", "miou", True, {"patch_size": 8}),
    "scene_depth": ("depth", "rmse", False, {"patch_size": 8, "head.num_bins": 64, "head.upsample": 1}),
}
SIZE = 64


def run_dir(out: Path, task: str, name: str, lr: float, wd: float, seed: int) -> Path:
    return out / task / "runs" / f"{name}_lr{lr:g}_wd{wd:g}_seed{seed}"


def train_one(task: str, name: str, seed: int, args, directory: Path) -> tuple[torch.nn.Module, float]:
    """One library training run: ``steps`` x ``batch`` fresh scenes (one epoch), warm-up then cosine to 0, no EMA."""
    kind, _, _, overrides = DENSE_TASKS[task]
    steps = args.dense_steps
    cfg = TrainConfig(task=kind, model=name, dataset="fashion_mnist_scene", image_size=SIZE, model_overrides=dict(overrides),
                      train_subset=steps * args.dense_batch_size, val_subset=args.dense_val_items, epochs=1,
                      batch_size=args.dense_batch_size, lr=args.dense_lr, min_lr=0.0, weight_decay=args.dense_wd,
                      warmup_steps=min(100, steps // 5), grad_clip=3.0, ema_decay=0.0, augment=False, seed=seed,
                      eval_every=0, progress=False, log_every=50, out_dir=str(directory.parent), name=directory.name,
                      objective=ObjectiveConfig() if name == ADAPTIVE else ObjectiveConfig.static())
    torch.manual_seed(seed)
    result = Trainer(cfg, get_task(kind)).fit(resume=True)
    return result.model.eval(), result.train_seconds


def val_loader(task: str, items: int) -> DataLoader:
    return DataLoader(FashionMNISTScene("val", target=DENSE_TASKS[task][0], canvas=SIZE, length=items), batch_size=100)


def grid_metrics(model: torch.nn.Module, task: str, items: int) -> dict[tuple[int, int, int], dict[str, float]]:
    results, *_ = evaluate_grid(model, val_loader(task, items), DENSE_TASKS[task][0], progress=False)
    return {(c.tokens, c.depth, c.width): r for c, r in results.items()}


@torch.no_grad()
def mean_depth_baseline(model: torch.nn.Module, items: int, train_items: int = 2000) -> dict[str, float]:
    """The depth metrics of predicting the mean training depth everywhere (the metric the models are scored with)."""
    train = FashionMNISTScene("train", target="depth", canvas=SIZE, length=train_items)
    mean = float(torch.stack([train[i][1] for i in range(len(train))]).mean())
    metric = get_metric("depth")(model)
    for _, depth in val_loader("scene_depth", items):
        metric.update(torch.full_like(depth, mean), depth)
    return {"mean_depth": mean, **metric.compute()}


@torch.no_grad()
def patch_oracle(task: str, items: int, patch: int = 8) -> dict[str, float]:
    """What a head on the patch grid can at best do: the true class fractions (or mean depth) of every patch,
    upsampled bilinearly as the heads do, scored with the task's metric on the validation scenes."""
    kind = DENSE_TASKS[task][0]
    targets = torch.cat([t for _, t in val_loader(task, items)])
    if kind == "depth":
        pred, metric = F.avg_pool2d(targets, patch), get_metric("depth")()
    else:
        pred = F.avg_pool2d(F.one_hot(targets, FashionMNISTScene.num_classes).permute(0, 3, 1, 2).float(), patch)
        metric = get_metric("segmentation")(num_classes=FashionMNISTScene.num_classes)
    metric.update(F.interpolate(pred, size=targets.shape[-2:], mode="bilinear", align_corners=False), targets)
    return metric.compute()


def run_model(task: str, name: str, args, machine: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Train every seed, evaluate every setting, count and time the front; the record (``OUT/task/name.json``)."""
    out = Path(args.out)
    path = out / task / f"{name}.json"
    if path.exists():
        record = json.loads(path.read_text())
        if "patch_oracle" not in record:  # records written before the oracle row existed
            record["patch_oracle"] = patch_oracle(task, record["val_items"])
            path.write_text(json.dumps(record, indent=1) + "\n")
        return record
    t0 = time.perf_counter()
    per_seed, train_s, model = [], [], None
    for seed in args.seeds:
        model, secs = train_one(task, name, seed, args, run_dir(out, task, name, args.dense_lr, args.dense_wd, seed))
        per_seed.append(grid_metrics(model, task, args.dense_val_items))
        train_s.append(secs)
    kind, primary, higher, _ = DENSE_TASKS[task]
    settings = sorted(per_seed[0])
    mean = {s: {k: sum(p[s][k] for p in per_seed) / len(per_seed) for k in per_seed[0][s]} for s in settings}
    gflops = {s: encoder_gflops(model, s, (SIZE, SIZE)) for s in settings}
    front = [s for s, on in zip(settings, pareto_front([(gflops[s], mean[s][primary]) for s in settings], higher)) if on]
    torch.manual_seed(0)
    times = {}
    for s in front:
        b1 = measure_latency(model, s, 1, repeats=3 * args.repeats, warmup=3)
        b64 = measure_latency(model, s, 64, repeats=args.repeats, warmup=2)
        times[s] = {"latency_ms_b1_fp32": b1.median_ms, "throughput_b64_fp32": b64.throughput}
    rows = [{"task": task, "model": name, "tokens": s[0], "depth": s[1], "width": s[2],
             **{k: round(v, 4) for k, v in mean[s].items()},
             **{f"{primary}_seed{sd}": round(p[s][primary], 4) for sd, p in zip(args.seeds, per_seed)},
             "encoder_mflops": gflops[s] * 1e3, "front": s in front, **times.get(s, {})} for s in settings]
    record = {"task": task, "model": name, "rows": rows, "train_seconds": train_s, "steps": args.dense_steps,
              "batch_size": args.dense_batch_size, "lr": args.dense_lr, "wd": args.dense_wd, "seeds": args.seeds,
              "val_items": args.dense_val_items, "repeats": args.repeats, "wall_s": time.perf_counter() - t0,
              "machine": machine()}
    record["patch_oracle"] = patch_oracle(task, args.dense_val_items)
    if kind == "depth":
        record["mean_depth_predictor"] = mean_depth_baseline(model, args.dense_val_items)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def load(out: Path) -> dict[str, list[dict]]:
    """The finished dense records per task, in model order."""
    found = {}
    for task in DENSE_TASKS:
        recs = [json.loads((out / task / f"{m}.json").read_text()) for m in MODELS if (out / task / f"{m}.json").exists()]
        if recs:
            found[task] = recs
    return found


def cheapest_reaching(rows: list[dict], key: str, level: float, higher: bool) -> dict | None:
    ok = [r for r in rows if (r[key] >= level if higher else r[key] <= level)]
    return min(ok, key=lambda r: r["encoder_mflops"]) if ok else None


def full_row(rec: dict) -> dict:
    return max(rec["rows"], key=lambda r: r["encoder_mflops"])


def claims(records: dict[str, list[dict]]) -> list[tuple[str, str, str, str]]:
    """Claim rows (claim, our measurement, the peers' numbers, verdict) for the dense tasks."""
    out = []
    for task, (kind, key, higher, _) in DENSE_TASKS.items():
        recs = {r["model"]: r for r in records.get(task, [])}
        vits = [recs[m] for m in VITS if m in recs]
        if ADAPTIVE not in recs or not vits:
            out.append((f"{task}: the dense claim", "-", "-", "NOT RUN (the adaptive model and a ViT must both finish: "
                        "`paper_claims.py --dense`)"))
            continue
        one_seed = " (provisional: one seed)" if any(len(r["seeds"]) < 2 for r in recs.values()) else ""
        ours, largest = recs[ADAPTIVE]["rows"], full_row(vits[-1])
        best = max(ours, key=lambda r: r[key] if higher else -r[key])
        hit = cheapest_reaching(ours, key, largest[key], higher)
        unit = "mIoU %" if kind == "segmentation" else "RMSE"
        peers = ", ".join(f"{r['model']} {full_row(r)[key]:.3f} @ {full_row(r)['encoder_mflops']:.1f}" for r in vits)
        if hit:
            ratio = largest["encoder_mflops"] / hit["encoder_mflops"]
            ours_txt = (f"cheapest setting at the largest ViT's {unit} ({largest['model']}, {largest[key]:.3f}): "
                        f"{hit['tokens']}/{hit['depth']}/{hit['width']}, {hit[key]:.3f} @ {hit['encoder_mflops']:.1f} "
                        f"encoder MFLOPs = {ratio:.2f}x fewer")
        else:
            ratio = 0.0
            ours_txt = (f"no setting reaches the largest ViT's {unit} {largest[key]:.3f}; best {best[key]:.3f} "
                        f"({best['tokens']}/{best['depth']}/{best['width']} @ {best['encoder_mflops']:.1f} MFLOPs)")
        verdict = ("HOLDS" + one_seed) if ratio >= 3 else "MISSED"
        out.append((f"{task}: adaptive matches the largest ViT's {unit} at >= 3x fewer encoder FLOPs "
                    f"(paper: 26x vs ViT-H/14)", ours_txt, peers, verdict))
        if kind == "depth":
            base = recs[ADAPTIVE]["mean_depth_predictor"]["rmse"]
            full = full_row(recs[ADAPTIVE])
            frac = full["rmse"] / base
            beaten = [r["model"] for r in map(full_row, vits)  # a ViT at most as costly and at least as good, one strictly
                      if r["encoder_mflops"] <= best["encoder_mflops"] and r["rmse"] <= best["rmse"]
                      and (r["encoder_mflops"], r["rmse"]) != (best["encoder_mflops"], best["rmse"])]
            out.append((f"{task}: adaptive RMSE <= 50 % of the mean-depth predictor's, and its best setting on the ViT "
                        "front (no ViT both cheaper and better)", f"full setting {full['rmse']:.3f} = {100 * frac:.0f} % of "
                        f"{base:.3f}; best setting {best['rmse']:.3f} @ {best['encoder_mflops']:.1f} MFLOPs "
                        f"{'dominated by ' + ', '.join(beaten) if beaten else 'not dominated by any ViT'}",
                        "ViTs: " + ", ".join(f"{100 * full_row(r)['rmse'] / base:.0f} %" for r in vits),
                        ("HOLDS" + one_seed) if frac <= 0.5 and not beaten else "MISSED"))
    return out


def plot(task: str, rows: list[dict], path: Path) -> None:
    key, label = ("miou", "mIoU %") if DENSE_TASKS[task][0] == "segmentation" else ("rmse", "RMSE (lower is better)")
    panels = [("encoder_mflops", "encoder MFLOPs per image"), ("throughput_b64_fp32", "images/s, batch 64, fp32 eager"),
              ("latency_ms_b1_fp32", "ms, batch 1, fp32 eager")]
    fig = new_figure(figsize=(15, 4.2))
    for ax, (x, xlabel) in zip(fig.subplots(1, 3), panels):
        for i, name in enumerate(MODELS):
            mine = [r for r in rows if r["model"] == name and r.get(x) is not None]
            front = sorted((r[x], r[key]) for r in mine if r["front"])
            if x == "encoder_mflops" and len(mine) > 1:  # every setting as a dot, the front as a line
                ax.plot([r[x] for r in mine], [r[key] for r in mine], ".", color=f"C{i}", alpha=0.35, ms=4)
            if front:
                ax.plot(*zip(*front), "o-" if len(front) > 1 else "s", color=f"C{i}", label=name, ms=4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        if x != "latency_ms_b1_fp32":  # batch-1 times span less than a decade: a linear axis keeps its labels
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"{task}: every setting vs encoder FLOPs; the FLOPs front vs time")
    save_figure(fig, path)


def doc_section(records: dict[str, list[dict]], doc_dir: Path) -> list[str]:
    """The dense section of docs/paper_claims.md (tables, plots, CSVs written beside it)."""
    if not records:
        return []
    lines = ["## Dense prediction (derived scenes)", "",
             "The data is **derived**, not a benchmark: 64 px views of 2-3 Fashion-MNIST items standing at depths "
             "1-3 in front of a wall at depth 4; an item at depth z is drawn 48/z px wide and nearer items cover "
             "farther ones, so depth is in the pixels (apparent size, occlusion). Labels: background + 10 item classes; "
             "depth: the depth of the visible item or the wall (`adaperceiver.data.dense.FashionMNISTScene`). "
             "Validation scenes are built from the Fashion-MNIST test images. Every model has the same head on a "
             "64-channel per-patch feature map (patch 8); the adaptive backbone is `adaperceiver_tiny64` trained with the "
             "joint objective, the ViTs (`ViTDense`) at their one setting. Encoder FLOPs: backbone and per-patch "
             "write-out, head excluded.", ""]
    for task, recs in records.items():
        kind, key, _, overrides = DENSE_TASKS[task]
        rows = [r for rec in recs for r in rec["rows"]]
        write_csv(rows, doc_dir / f"{task}.csv")
        plot(task, rows, doc_dir / f"{task}.png")
        r0, m = recs[0], recs[0]["machine"]
        cmd = (f"flock /work/heavy.lock python benchmarks/paper_claims.py --dense --seeds "
               f"{','.join(map(str, r0['seeds']))} --dense-steps {r0['steps']} --dense-batch-size {r0['batch_size']} "
               f"--dense-lr {r0['lr']:g} --dense-wd {r0['wd']:g} --dense-val-items {r0['val_items']} --repeats {r0['repeats']}")
        extra = ["δ<1.25", "AbsRel"] if kind == "depth" else ["pixel acc %"]
        lines += [f"### {task}", "", f"Measured by `{cmd}` (overrides {overrides}; lr and weight decay the same for every "
                  "model, not tuned).", "", f"![{task}](paper_claims/{task}.png)", "",
                  f"CSV: [paper_claims/{task}.csv](paper_claims/{task}.csv). Timings on {m.get('cpu')} (AMX: {m.get('amx')}, "
                  f"AVX-512-bf16: {m.get('avx512_bf16')}), {m.get('threads')} threads, load average {m.get('load_avg')} "
                  f"at the end of the first model's record, fp32 eager, whole model with head.", "",
                  f"| model | setting | {key} | {' | '.join(extra)} | encoder MFLOPs | ms, batch 1 | img/s, batch 64 | train s |",
                  "|---|---|---|---|" + "---|" * (len(extra) + 3)]
        for rec in recs:
            shown = [full_row(rec)] if rec["model"] != ADAPTIVE else sorted(
                [r for r in rec["rows"] if r["front"]], key=lambda r: r["encoder_mflops"])
            for r in shown:
                vals = [f"{r['delta1']:.3f}", f"{r['abs_rel']:.3f}"] if kind == "depth" else [f"{r['pixel_acc']:.1f}"]
                lines.append(f"| {rec['model']} | {r['tokens']}/{r['depth']}/{r['width']} | {r[key]:.3f} | "
                             f"{' | '.join(vals)} | {r['encoder_mflops']:.1f} | {r.get('latency_ms_b1_fp32', float('nan')):.2f} | "
                             f"{r.get('throughput_b64_fp32', float('nan')):.0f} | "
                             f"{', '.join(f'{s:.0f}' for s in rec['train_seconds'])} |")
        if kind == "depth" and any("mean_depth_predictor" in rec for rec in recs):
            base = next(rec["mean_depth_predictor"] for rec in recs if "mean_depth_predictor" in rec)
            lines.append(f"| mean-depth predictor ({base['mean_depth']:.3f} everywhere) | - | {base['rmse']:.3f} | "
                         f"{base['delta1']:.3f} | {base['abs_rel']:.3f} | 0 | - | - | - |")
        oracle = next((rec["patch_oracle"] for rec in recs if "patch_oracle" in rec), None)
        if oracle:  # the ceiling of any head on the 8 px patch grid
            vals = [f"{oracle['delta1']:.3f}", f"{oracle['abs_rel']:.3f}"] if kind == "depth" else [f"{oracle['pixel_acc']:.1f}"]
            lines.append(f"| patch-level oracle (true per-patch {'mean depth' if kind == 'depth' else 'class fractions'}, "
                         f"upsampled) | - | {oracle[key]:.3f} | {' | '.join(vals)} | - | - | - | - |")
        lines += ["", f"Adaptive rows: its settings on the encoder-FLOPs front (all {len(recs[0]['rows'])} settings in "
                  "the CSV); ViT rows: their one setting.", ""]
    return lines


def run(args, machine: Callable[[], dict[str, Any]]) -> dict[str, list[dict]]:
    """Train and measure every (dense task, model) not yet finished (``machine()`` describes where); returns all
    finished records."""
    for task in DENSE_TASKS:
        for name in MODELS:
            if args.dense_models and name not in args.dense_models:
                continue
            print(f"{task} / {name} ...", flush=True)
            run_model(task, name, args, machine)
    return load(Path(args.out))
