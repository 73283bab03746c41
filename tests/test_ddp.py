"""Multi-process training through torchrun (gloo, CPU): ranks stay in sync and match one process.

One process with global batch B and two processes with B/2 each see the same samples, the same
per-sample widths and average the same gradients, so their parameters agree to float tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaperceiver.tasks import get_task
from adaperceiver.training import TrainConfig, Trainer

WORKER = Path(__file__).resolve().parent / "helpers" / "ddp_worker.py"


def ddp_config(out: Path, name: str, accum_steps: int = 1) -> TrainConfig:
    return TrainConfig(
        dataset="digits", model="adaperceiver_tiny", augment=False, epochs=1, batch_size=32, max_steps=4,
        warmup_steps=1, ema_decay=0.0, seed=3, out_dir=str(out), name=name, progress=False, accum_steps=accum_steps,
        model_overrides=dict(embed_dim=32, num_heads=4, depth=2, num_latents=8, token_grans=[4, 8], widths=[16, 24, 32]),
    )


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("single")
    return flat_params(Trainer(ddp_config(out, "one"), get_task("classification")).fit().model)


def test_gradient_accumulation_matches_one_big_batch(single, tmp_path):
    accum = flat_params(Trainer(ddp_config(tmp_path, "accum", accum_steps=2), get_task("classification")).fit().model)
    torch.testing.assert_close(accum, single, atol=2e-5, rtol=0)


def test_two_processes_with_torchrun_match_one_process(single, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[2] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "params_rank0.pt"), torch.load(tmp_path / "params_rank1.pt")
    assert torch.equal(r0, r1), "ranks drifted apart"
    initial = flat_params(Trainer(ddp_config(tmp_path, "init"), get_task("classification")).model)
    assert (r0 - initial).abs().max() > 1e-3  # training really moved them
    torch.testing.assert_close(r0, single, atol=2e-5, rtol=0)
    # only rank 0 wrote the run directory, and it holds exactly the configured number of steps
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
    assert '"step": 4' in (tmp_path / "ddp" / "checkpoints" / "last.json").read_text()


def test_killed_worker_restarts_resumes_and_finishes_exactly(tmp_path):
    """torchrun --max-restarts=1: SIGKILL one worker after a checkpoint; the job resumes and ends at the configured step."""
    pytest.importorskip("sklearn")
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ddp_fault_drill.py"
    spec = importlib.util.spec_from_file_location("ddp_fault_drill", path)
    drill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drill)
    res = drill.drill(tmp_path / "drill", kill_after_step=20, timeout_s=240)
    assert res["killed_worker_pid"] is not None and res["checkpoint_step_at_kill"] >= 20
    assert res["returncode"] == 0 and res["restarted"]
    assert res["final_step"] == res["configured_steps"] == drill.STEPS
    assert res["logged_steps_unique"] and res["logged_steps"][-1] == drill.STEPS
