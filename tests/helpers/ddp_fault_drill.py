"""Kill a torchrun worker mid-training and check that the job restarts, resumes and finishes exactly.

    python tests/helpers/ddp_fault_drill.py [--out runs/fault_drill] [--kill-after-step 20]

(tests/test_ddp.py runs it the same way.)

Starts ``torchrun --standalone --nproc_per_node=2 --max-restarts=1 -m adaperceiver train ... --resume``
on the sklearn digits set, waits until a checkpoint at or after ``--kill-after-step`` exists, sends
SIGKILL to one worker, and waits for torchrun. Passes when torchrun exits 0 after a restart, the
run's last checkpoint is at exactly the configured number of optimizer steps, and metrics.csv
holds each logged step once (steps redone after the restart replace the lost ones).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STEPS = 60  # the configured number of optimizer steps


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc; Linux)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def last_step(run_dir: Path) -> int:
    pointer = run_dir / "checkpoints" / "last.json"
    try:
        return int(json.loads(pointer.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def drill(out: Path, kill_after_step: int, timeout_s: float = 600.0) -> dict:
    if out.exists():
        shutil.rmtree(out)
    run_dir = out / "drill"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "adaperceiver", "train", "--dataset", "digits", "--no-augment", "--epochs", "100",
           "--max-steps", str(STEPS), "--batch-size", "32", "--warmup-steps", "5", "--checkpoint-every", "10",
           "--log-every", "5", "--out", str(out), "--name", "drill", "--resume", "--no-progress",
           "--set", "embed_dim=32", "--set", "depth=2", "--set", "num_latents=8", "--set", "token_grans=[4,8]",
           "--set", "widths=[16,24,32]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out.mkdir(parents=True)
    log = (out / "torchrun.log").open("w")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    killed = None
    while proc.poll() is None and time.time() - t0 < timeout_s:
        if killed is None and last_step(run_dir) >= kill_after_step:
            workers = children(proc.pid)
            if workers:
                killed = (workers[-1], last_step(run_dir))
                os.kill(workers[-1], signal.SIGKILL)
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
        raise SystemExit(f"torchrun did not finish within {timeout_s:.0f} s; see {out / 'torchrun.log'}")
    log.close()
    text = (out / "torchrun.log").read_text()
    with (run_dir / "metrics.csv").open() as f:
        train_steps = [int(r["step"]) for r in csv.DictReader(f) if r["split"] == "train"]
    return {
        "returncode": proc.returncode,
        "killed_worker_pid": killed[0] if killed else None,
        "checkpoint_step_at_kill": killed[1] if killed else None,
        "restarted": "resumed " in text,  # printed by the restarted main process
        "final_step": last_step(run_dir),
        "configured_steps": STEPS,
        "logged_steps_unique": len(train_steps) == len(set(train_steps)),
        "logged_steps": train_steps,
        "wall_seconds": round(time.time() - t0, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/fault_drill")
    ap.add_argument("--kill-after-step", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up on torchrun")
    args = ap.parse_args()
    res = drill(Path(args.out), args.kill_after_step, args.timeout)
    print(json.dumps(res))
    ok = (res["returncode"] == 0 and res["killed_worker_pid"] is not None and res["restarted"]
          and res["final_step"] == res["configured_steps"] and res["logged_steps_unique"])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
