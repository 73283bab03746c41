"""Does distillation from a larger static teacher beat labels alone, at every configuration?

    flock /tmp/adaperceiver-heavy.lock python benchmarks/distill_experiment.py [--epochs 4] [--out runs/distill_exp]

1. ``adaperceiver teacher``: a static ViT (D=128, 4 blocks, all 49 patches) on Fashion-MNIST.
2. ``adaperceiver distill``: adaperceiver_tiny from that teacher (logits KD + feature matching,
   CE weight 0 as in the paper's recipe), teacher outputs cached (no augmentation).
3. ``adaperceiver train``: the same student, same data, epochs and seed, from labels only.
4. ``adaperceiver sweep`` on both, then ``comparison.csv`` / ``comparison.png``: accuracy of every
   (tokens, depth, width) configuration, distilled vs labels-only, against GFLOPs.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path


def sh(*args: str) -> None:
    print("$ adaperceiver " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "adaperceiver", *args], check=True)


def read_sweep(path: Path) -> dict[tuple[int, int, int], dict]:
    with path.open() as f:
        return {(int(r["tokens"]), int(r["depth"]), int(r["width"])): r for r in csv.DictReader(f)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4, help="student epochs (both students)")
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--out", default="runs/distill_exp")
    args = ap.parse_args()
    out = Path(args.out)
    common = ["--dataset", "fashion_mnist", "--out", str(out), "--no-progress"]
    student = ["--epochs", str(args.epochs), "--no-augment", "--seed", "0"]
    if not (out / "teacher" / "model.safetensors").is_file():
        sh("teacher", "--name", "teacher", "--embed-dim", "128", "--depth", "4", "--epochs", str(args.teacher_epochs),
           *common)
    for name, cmd in (("distilled", ["distill", "--teacher", str(out / "teacher"), "--teacher-cache",
                                     str(out / "teacher_cache")]),
                      ("labels", ["train"])):
        if not (out / name / "model.safetensors").is_file():
            sh(*cmd, "--name", name, *student, *common)
        if not (out / name / "sweep" / "sweep.csv").is_file():
            sh("sweep", "--model", str(out / name), "--latency-batch-sizes", "1", "--no-progress")

    dist, lab = read_sweep(out / "distilled" / "sweep" / "sweep.csv"), read_sweep(out / "labels" / "sweep" / "sweep.csv")
    teacher_meta = json.loads((out / "teacher" / "config.json").read_text())
    rows = []
    for key in sorted(dist):
        d, l_ = float(dist[key]["acc1"]), float(lab[key]["acc1"])
        rows.append({"tokens": key[0], "depth": key[1], "width": key[2], "gflops": float(dist[key]["gflops"]),
                     "acc1_distilled": d, "acc1_labels": l_, "gain_pp": round(d - l_, 2)})  # sweep acc1 is in %
    with (out / "comparison.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    wins = sum(r["gain_pp"] > 0 for r in rows)
    gains = sorted(r["gain_pp"] for r in rows)
    summary = {"configurations": len(rows), "distilled_better": wins, "median_gain_pp": gains[len(gains) // 2],
               "min_gain_pp": gains[0], "max_gain_pp": gains[-1],
               "full_config": rows[-1] if rows else None, "teacher_metrics": teacher_meta.get("metrics")}
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    g = [r["gflops"] * 1e3 for r in rows]
    ax.scatter(g, [r["acc1_labels"] for r in rows], s=14, label="labels only", color="tab:gray")
    ax.scatter(g, [r["acc1_distilled"] for r in rows], s=14, label="distilled (KD + features)", color="tab:blue")
    t_acc = (teacher_meta.get("metrics") or {}).get("val_acc1")  # percent, like the sweep
    if t_acc:
        ax.axhline(t_acc, ls="--", color="tab:red", lw=1, label=f"static ViT teacher ({t_acc:.1f}%)")
    ax.set_xlabel("MFLOPs per image (student configuration)")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_title(f"adaperceiver_tiny, {args.epochs} epochs: every (tokens, depth, width)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=120)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'comparison.csv'}, {out / 'comparison.json'}, {out / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
