"""Does distillation from a stronger teacher beat labels alone, at every configuration? Two seeds.

    flock /work/heavy.lock python benchmarks/distill_experiment.py --out runs/distill_exp [--budget-s 330]

Every step below is an ``adaperceiver`` command (printed as it runs) and is skipped when already
done, so the experiment can be run in short pieces: with ``--budget-s`` the script stops starting
new work once that many seconds have passed and exits with status 3 ("run me again"); training
runs advance in chunks of ``--chunk-epochs`` (``--max-steps`` + ``--resume``) and checkpoint every
epoch, so a piece killed by an outer ``timeout`` loses at most one epoch.

1. ``adaperceiver teacher --arch cnn``: a small VGG-style CNN, trained longer and with augmentation,
   on the students' subset or (``--teacher-train-subset``) on more of the training split; the teacher
   cache holds only the students' images either way.
2. For each seed, the paper's two-stage recipe and its labels-only twin, same student, data, seed
   and number of epochs (stage 1 + stage 2 = labels-only), no augmentation (so the teacher cache
   is exact: the teacher runs once per image, in the first epoch of the first seed):
   - stage 1 ``adaperceiver distill``: logits KD + per-patch feature matching on every read-out, CE 0
     (``--ce-weight`` / ``--feature-weight`` change that, for ablations);
   - stage 2 ``adaperceiver train --init-from STAGE1 --freeze-backbone``: labels, backbone frozen;
   - ``adaperceiver train``: the same student from labels only for all the epochs.
3. Accuracy and GFLOPs of every (tokens, depth, width) of both final students on the test split,
   then ``comparison.csv`` (mean over seeds and per seed), ``comparison.json`` and
   ``comparison.png`` (accuracy vs GFLOPs, both students, the teacher as a horizontal line).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "adaperceiver"]


class OutOfBudget(Exception):
    pass


class Runner:
    def __init__(self, budget_s: float | None):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def check(self, need_s: float = 0.0) -> None:
        if self.budget_s is not None and time.perf_counter() - self.t0 + need_s > self.budget_s:
            raise OutOfBudget

    def sh(self, *args: str) -> None:
        self.check()  # start while inside the budget; an outer timeout may cut a run (it resumes per epoch)
        print("$ adaperceiver " + " ".join(args), flush=True)
        subprocess.run([*CLI, *args], check=True)


def done_steps(run_dir: Path) -> int:
    pointer = run_dir / "checkpoints" / "last.json"
    return json.loads(pointer.read_text())["step"] if pointer.is_file() else 0


def train_in_chunks(r: Runner, run_dir: Path, total_steps: int, chunk: int, *args: str) -> None:
    """Run ``args`` (a training command with --name) to ``total_steps``, one ``chunk`` of steps per call."""
    while (step := done_steps(run_dir)) < total_steps:
        r.sh(*args, "--resume", "--max-steps", str(min(total_steps, step + chunk)))


def sweep_accuracy(run_dir: Path, dataset: str, limit: int | None) -> list[dict]:
    """Test accuracy and GFLOPs of every configuration (no latency), cached in RUN_DIR/sweep_acc.csv."""
    path = run_dir / "sweep_acc.csv"
    if not path.is_file():
        from torch.utils.data import DataLoader, Subset

        from adaperceiver.checkpoint import from_pretrained
        from adaperceiver.data import get_dataset
        from adaperceiver.evaluation import run_sweep

        print(f"# sweep (accuracy + GFLOPs of every configuration) of {run_dir}", flush=True)
        data = get_dataset(dataset, "val")
        if limit:
            data = Subset(data, range(min(limit, len(data))))
        rows = run_sweep(from_pretrained(run_dir), DataLoader(data, batch_size=500), None, latency_batch_sizes=(),
                         progress=False)
        keep = ("tokens", "depth", "width", "acc1", "gflops")
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keep)
            w.writeheader()
            w.writerows({k: row[k] for k in keep} for row in rows)
    with path.open() as f:
        return [{k: float(v) if k in ("acc1", "gflops") else int(v) for k, v in row.items()} for row in csv.DictReader(f)]


def teacher_gflops(run_dir: Path) -> float:
    import torch

    from adaperceiver.checkpoint import from_pretrained
    from adaperceiver.evaluation.cost import count_flops

    model = from_pretrained(run_dir).eval()
    c = model.cfg
    return count_flops(model, torch.zeros(1, c.in_chans, c.img_size, c.img_size)) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/distill_exp")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--train-subset", type=int, default=10000, help="training images (a fixed subset; default 10000)")
    ap.add_argument("--eval-limit", type=int, default=None, help="sweep only the first N test images")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--teacher-train-subset", type=int, default=None,
                    help="teacher training images: N (a fixed subset), 0 for the whole training split "
                         "(default: the students' --train-subset)")
    ap.add_argument("--teacher-channels", default="32,64,128")
    ap.add_argument("--teacher-convs", type=int, default=1)
    ap.add_argument("--stage1-epochs", type=int, default=3)
    ap.add_argument("--stage2-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--model", default="adaperceiver_tiny", help="student preset")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="student config override (passed to distill and train)")
    ap.add_argument("--ce-weight", type=float, default=None,
                    help="stage 1 supervised CE weight (default: the distill command's, 0)")
    ap.add_argument("--feature-weight", type=float, default=None,
                    help="stage 1 feature-matching weight (default: the distill command's, 1)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new work after this many seconds")
    ap.add_argument("--chunk-epochs", type=int, default=4,
                    help="student epochs per training command (checkpoints are written every epoch anyway)")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: write the comparison from the seeds whose two sweeps are done")
    args = ap.parse_args()
    if args.teacher_train_subset is not None and args.teacher_train_subset < 0:
        ap.error(f"--teacher-train-subset must be >= 0 (0: the whole training split), got {args.teacher_train_subset}")
    out = Path(args.out)
    if args.report:
        args.seeds = [s for s in args.seeds
                      if all((out / f"{k}_s{s}" / "sweep_acc.csv").is_file() for k in ("distilled", "labels"))]
        if not args.seeds:
            raise SystemExit(f"no seed of {out} has both sweeps yet")
        write_comparison(out, args)
        return 0
    common = ["--dataset", args.dataset, "--out", str(out), "--no-progress",
              "--batch-size", str(args.batch_size), "--warmup-steps", str(args.warmup_steps)]
    data = ["--train-subset", str(args.train_subset), *common]
    t_subset = args.train_subset if args.teacher_train_subset is None else args.teacher_train_subset
    if t_subset:
        t_data, t_images = ["--train-subset", str(t_subset), *common], t_subset
    else:  # the whole split: its size sets the teacher's steps per epoch
        from adaperceiver.data import get_dataset

        t_data, t_images = common, len(get_dataset(args.dataset, "train"))
    t_steps_per_epoch = t_images // args.batch_size
    student = ["--model", args.model, *[a for o in args.overrides for a in ("--set", o)], "--no-augment"]
    recipe = [a for flag, v in (("--ce-weight", args.ce_weight), ("--feature-weight", args.feature_weight))
              if v is not None for a in (flag, f"{v:g}")]
    steps_per_epoch = args.train_subset // args.batch_size
    r = Runner(args.budget_s)
    try:
        train_in_chunks(r, out / "teacher", args.teacher_epochs * t_steps_per_epoch, 2 * t_steps_per_epoch,
                        "teacher", "--arch", "cnn", "--channels", args.teacher_channels,
                        "--convs-per-stage", str(args.teacher_convs), "--epochs", str(args.teacher_epochs),
                        "--name", "teacher", *t_data)
        epochs = args.stage1_epochs + args.stage2_epochs
        chunk = args.chunk_epochs * steps_per_epoch
        for seed in args.seeds:
            s = ["--seed", str(seed)]
            train_in_chunks(r, out / f"stage1_s{seed}", args.stage1_epochs * steps_per_epoch, chunk,
                            "distill", "--teacher", str(out / "teacher"), "--teacher-cache", str(out / "teacher_cache"),
                            "--epochs", str(args.stage1_epochs), "--name", f"stage1_s{seed}", *recipe, *student, *s, *data)
            train_in_chunks(r, out / f"distilled_s{seed}", args.stage2_epochs * steps_per_epoch, chunk,
                            "train", "--init-from", str(out / f"stage1_s{seed}"), "--freeze-backbone",
                            "--epochs", str(args.stage2_epochs), "--name", f"distilled_s{seed}", *student, *s, *data)
            train_in_chunks(r, out / f"labels_s{seed}", epochs * steps_per_epoch, chunk,
                            "train", "--epochs", str(epochs), "--name", f"labels_s{seed}", *student, *s, *data)
            for name in (f"distilled_s{seed}", f"labels_s{seed}"):
                r.check(30)
                sweep_accuracy(out / name, args.dataset, args.eval_limit)
    except OutOfBudget:
        print(f"stopped after {time.perf_counter() - r.t0:.0f} s (--budget-s {args.budget_s:g}); run the same "
              f"command again to continue", flush=True)
        return 3
    write_comparison(out, args)
    return 0


def write_comparison(out: Path, args) -> None:
    seeds = args.seeds
    sweeps = {(kind, s): {(r["tokens"], r["depth"], r["width"]): r for r in
                          sweep_accuracy(out / f"{kind}_s{s}", args.dataset, args.eval_limit)}
              for kind in ("distilled", "labels") for s in seeds}
    keys = sorted(sweeps[("distilled", seeds[0])], key=lambda k: (sweeps[("distilled", seeds[0])][k]["gflops"], k))
    rows = []
    for k in keys:
        row = {"tokens": k[0], "depth": k[1], "width": k[2], "gflops": sweeps[("distilled", seeds[0])][k]["gflops"]}
        for kind in ("distilled", "labels"):
            vals = [sweeps[(kind, s)][k]["acc1"] for s in seeds]
            row[f"acc1_{kind}"] = round(statistics.mean(vals), 2)
            row.update({f"acc1_{kind}_s{s}": v for s, v in zip(seeds, vals)})
        row["gain_pp"] = round(row["acc1_distilled"] - row["acc1_labels"], 2)
        rows.append(row)
    with (out / "comparison.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    full = max(rows, key=lambda r: (r["tokens"], r["depth"], r["width"]))
    gains = sorted(r["gain_pp"] for r in rows)
    teacher_meta = json.loads((out / "teacher" / "config.json").read_text())
    t_acc = (teacher_meta.get("metrics") or {}).get("val_acc1")
    seconds = {}
    for name in ["teacher"] + [f"{k}_s{s}" for k in ("stage1", "distilled", "labels") for s in seeds]:
        state = json.loads((out / name / "config.json").read_text())
        seconds[name] = round(float(state.get("train_seconds", float("nan"))), 1)
    summary = {"configurations": len(rows), "seeds": seeds, "distilled_better": sum(g > 0 for g in gains),
               "median_gain_pp": statistics.median(gains), "min_gain_pp": gains[0], "max_gain_pp": gains[-1],
               "full_config": full, "teacher_acc1": t_acc,
               "teacher_train_images": teacher_meta.get("train", {}).get("train_subset") or "all",
               "teacher_gflops": teacher_gflops(out / "teacher"),
               "train_seconds": seconds, "settings": vars(args)}
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(out, rows, summary, args)
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2))
    print(f"wrote {out / 'comparison.csv'}, {out / 'comparison.json'}, {out / 'comparison.png'}")


def plot(out: Path, rows: list[dict], summary: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    g = [r["gflops"] * 1e3 for r in rows]
    seeds = summary["seeds"]
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of {len(seeds)} seeds"
    ax.scatter(g, [r["acc1_labels"] for r in rows], s=16, color="tab:gray", label=f"labels only ({which})")
    fw = 1.0 if args.feature_weight is None else args.feature_weight
    stage1 = "KD" + (" + features" if fw else "") + (f" + {args.ce_weight:g}·CE" if args.ce_weight else "")
    ax.scatter(g, [r["acc1_distilled"] for r in rows], s=16, color="tab:blue",
               label=f"distilled: {stage1}, then frozen-backbone fine-tune ({which})")
    if summary["teacher_acc1"]:
        ax.axhline(summary["teacher_acc1"], ls="--", color="tab:red", lw=1,
                   label=f"CNN teacher ({summary['teacher_train_images']} training images): {summary['teacher_acc1']:.1f} % "
                         f"at {summary['teacher_gflops'] * 1e3:.0f} MFLOPs")
    ax.set_xlabel("MFLOPs per image (student configuration)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{args.model} on {args.dataset} ({args.train_subset} training images): every (tokens, depth, width)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
