"""Faults around a run directory: concurrent writers, kills, Ctrl-C, disk full, damaged or edited files.

What is guaranteed (docs/faults.md): a run directory has one writer at a time (a second one is
refused, naming the holder); a killed writer's lock and temporary files do not outlive it; a file
is either the old or the new complete version; damage is found on load (sha256) rather than
silently used; ``--resume`` continues exactly or refuses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from adaperceiver import from_pretrained
from adaperceiver.checkpoint import atomic_write
from adaperceiver.cli import main

pytest.importorskip("sklearn")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, train_argv):
    """A run stopped (resumably) after step 1 of 2, with a checkpoint at step 1."""
    out = tmp_path_factory.mktemp("faults")
    assert main(train_argv(out, "--max-steps", "1", "--checkpoint-every", "1")) == 0
    return out / "run"


@pytest.fixture
def run(stopped_run, tmp_path):
    """A private copy of the stopped run: (out, run_dir)."""
    shutil.copytree(stopped_run, tmp_path / "run")
    return tmp_path, tmp_path / "run"


@pytest.fixture
def resume(train_argv):
    """``resume(out, *flags)``: ``adaperceiver train ... --resume`` on the tiny run in ``out``."""
    return lambda out, *extra: main(train_argv(out, "--resume", *extra))


def step_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / json.loads((run_dir / "checkpoints" / "last.json").read_text())["dir"]


# --------------------------------------------------------------------------------------------------
# concurrent writers
HOLDER = """
import sys, time
from adaperceiver.checkpoint import run_lock
lock = run_lock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, capsys, cli_error, train_argv):
    holder = _hold_lock(tmp_path / "run")
    try:
        line = cli_error(train_argv(tmp_path), capsys)
        assert str(holder.pid) in line and socket.gethostname() in line and "run" in line, line
        assert not (tmp_path / "run" / "checkpoints").exists()  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(train_argv(tmp_path)) == 0  # the dead holder's lock is gone with it
    assert from_pretrained(tmp_path / "run") is not None


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path, train_argv):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname()}))
    assert main(train_argv(tmp_path)) == 0


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    from adaperceiver.checkpoint import run_lock

    with run_lock(tmp_path / "d"):
        with run_lock(tmp_path / "d"):
            pass
    holder = _hold_lock(tmp_path / "d")  # another process can take it now
    holder.send_signal(signal.SIGKILL)
    holder.wait()


# --------------------------------------------------------------------------------------------------
# kills and temporary files
def test_temporary_files_left_by_a_kill_are_removed_on_the_next_run(run, resume):
    out, run_dir = run
    junk = [run_dir / ".model.safetensors.k1l2.tmp", step_dir(run_dir) / ".ema.safetensors.x9.tmp",
            run_dir / ".metrics.csv.abc.tmp"]
    for p in junk:
        p.write_bytes(b"half a file")
    assert resume(out) == 0
    assert not [p for p in junk if p.exists()]
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    from adaperceiver.checkpoint import save_state_dict

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.txt", lambda tmp: Path(tmp).write_text("x"))
        save_state_dict(tmp_path / "w.safetensors", {"a": torch.zeros(2)})  # safetensors recreates its file
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == mode


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def half(tmp):
        Path(tmp).write_text("ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(ValueError, match=r"f\.txt.*No space left"):
        atomic_write(target, half)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_disk_full_during_a_checkpoint_is_one_line_and_the_run_stays_resumable(run, capsys, monkeypatch, cli_error, resume, train_argv):
    from safetensors import SafetensorError

    from adaperceiver.checkpoint import state as checkpoint_state

    out, run_dir = run
    before = step_dir(run_dir)

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(checkpoint_state, "save_file", full)
    line = cli_error(train_argv(out, "--resume"), capsys)
    assert "safetensors" in line and "StorageFull" in line, line
    monkeypatch.undo()
    assert step_dir(run_dir) == before and not list(run_dir.rglob("*.tmp"))
    assert resume(out) == 0


def test_ctrl_c_is_one_line_and_keeps_the_last_checkpoint(run, capsys, monkeypatch, resume):
    from adaperceiver import training

    out, run_dir = run

    def interrupt(self, *a):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.Trainer, "train_step", interrupt)
    try:
        code = resume(out)
    except KeyboardInterrupt:  # must not escape: it would also stop pytest itself
        pytest.fail("KeyboardInterrupt escaped the CLI")
    assert code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupt" in err.lower() and "step_00000001" in err and "resume" in err, err
    monkeypatch.undo()
    assert resume(out) == 0


# --------------------------------------------------------------------------------------------------
# --resume: continues exactly, or refuses
@pytest.mark.parametrize("extra,named", [
    (["--lr", "0.1"], r"--lr"), (["--epochs", "3"], r"--epochs"), (["--set", "depth=3"], r"--set|depth"),
    (["--seed", "5"], r"--seed"), (["--no-augment"], r"augment"), (["--ema-decay", "0.9"], r"--ema-decay"),
    (["--grad-clip", "1"], r"--grad-clip"), (["--export", "raw"], r"--export"),
])
def test_resume_refuses_options_it_cannot_change(run, capsys, extra, named, cli_error, train_argv):
    import re

    out, _ = run
    line = cli_error(train_argv(out, "--resume", *extra), capsys)
    assert re.search(named, line) and "resume" in line, line


def test_resume_accepts_the_options_it_can_change(run, resume):
    out, run_dir = run
    assert resume(out, "--max-steps", "2", "--num-workers", "0", "--device", "cpu") == 0
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["step"] == 2


def test_nan_advice_says_what_works(tmp_path, tiny_overrides):
    from adaperceiver.tasks import get_task
    from adaperceiver.training import NonFiniteLossError, TrainConfig, Trainer

    class NaNAtCall:
        calls = 0

        def __call__(self, out, batch, weights):
            self.calls += 1
            return out.outputs.new_tensor(float("nan") if self.calls == 3 else 0.0), {}

    cfg = TrainConfig(dataset="digits", train_subset=32, val_subset=16, model_overrides=tiny_overrides, epochs=2, batch_size=16,
                      warmup_steps=1, out_dir=str(tmp_path), progress=False)
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg, get_task("classification"), extra_losses=[NaNAtCall()]).fit()
    msg = str(info.value)
    assert "lowering --lr" not in msg and "--" not in msg, msg  # no advice resume cannot follow, no CLI flags
    assert "new run" in msg and "lr" in msg and "init_from" in msg, msg


# --------------------------------------------------------------------------------------------------
# damaged or edited run files
def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 0x01
    path.write_bytes(bytes(raw))


def _damage_checkpoint_weights(run_dir):
    _flip(step_dir(run_dir) / "model.safetensors")
    return r"model\.safetensors.*sha256"


def _drop_ema(run_dir):
    (step_dir(run_dir) / "ema.safetensors").unlink()
    return r"ema\.safetensors"


def _pointer_disagrees(run_dir):
    (run_dir / "checkpoints" / "last.json").write_text(json.dumps({"dir": step_dir(run_dir).name, "step": 7}))
    return r"last\.json.*\b7\b|\b7\b.*last\.json"


def _corrupt_metrics(run_dir):
    (run_dir / "metrics.csv").write_text("step,epoch,split\nabc,1,train\n")
    return r"metrics\.csv"


def _corrupt_config(run_dir):
    (run_dir / "config.json").write_text('{"model": ')
    return r"config\.json"


def _other_shape_checkpoint(run_dir):
    from adaperceiver import create_model
    from adaperceiver.checkpoint import save_state_dict

    other = create_model("adaperceiver_tiny", patch_size=4, embed_dim=32, num_heads=4, depth=2, num_latents=8,
                         token_grans=(4, 8), widths=(16, 32))  # the tiny run's model at another width
    save_state_dict(step_dir(run_dir) / "model.safetensors", other.state_dict())
    return r"model\.safetensors"


def _damaged_trainer_state(run_dir):
    (step_dir(run_dir) / "trainer_state.pt").write_bytes(b"\x80\x04garbage")
    return r"trainer_state\.pt"


DAMAGE_ROWS = [_damage_checkpoint_weights, _drop_ema, _pointer_disagrees, _corrupt_metrics, _corrupt_config,
               _other_shape_checkpoint, _damaged_trainer_state]


@pytest.mark.parametrize("damage", DAMAGE_ROWS, ids=[f.__name__.strip("_") for f in DAMAGE_ROWS])
def test_resume_of_a_damaged_run_is_refused_naming_the_file(run, capsys, damage, cli_error, train_argv):
    import re

    out, run_dir = run
    pattern = damage(run_dir)
    line = cli_error(train_argv(out, "--resume"), capsys)
    assert re.search(pattern, line), line


# --------------------------------------------------------------------------------------------------
# a run directory is self-contained: it resumes only from, and deletes only, its own checkpoints
@pytest.fixture
def two_runs(stopped_run, tmp_path):
    """Copies of the stopped run as ``run`` and ``other`` in one ``out``: (out, run_dir, other_dir)."""
    for name in ("run", "other"):
        shutil.copytree(stopped_run, tmp_path / name)
    return tmp_path, tmp_path / "run", tmp_path / "other"


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


def _escape_by_relative_pointer(run_dir, other_dir):  # a copied or hand-edited directory
    step = step_dir(other_dir).name
    (run_dir / "checkpoints" / "last.json").write_text(json.dumps({"dir": f"../../other/checkpoints/{step}", "step": 1}))


def _escape_by_symlinked_step(run_dir, other_dir):
    shutil.rmtree(step_dir(run_dir))
    step_dir(run_dir).symlink_to(step_dir(other_dir))


def _escape_by_symlinked_checkpoints(run_dir, other_dir):
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").symlink_to(other_dir / "checkpoints")


ESCAPES = [_escape_by_relative_pointer, _escape_by_symlinked_step, _escape_by_symlinked_checkpoints]


@pytest.mark.parametrize("escape", ESCAPES, ids=[f.__name__.strip("_") for f in ESCAPES])
def test_resume_never_adopts_another_runs_checkpoint(two_runs, capsys, escape, cli_error, train_argv):
    out, run_dir, other_dir = two_runs
    escape(run_dir, other_dir)
    before = _snapshot(other_dir)
    line = cli_error(train_argv(out, "--resume", "--max-steps", "2"), capsys)
    assert "outside" in line and "checkpoints" in line, line
    assert _snapshot(other_dir) == before  # the other run is untouched


def test_rotation_deletes_only_checkpoint_files_this_run_wrote(run, capsys, resume):
    out, run_dir = run
    mine = run_dir / "checkpoints" / "step_00000000_notes"  # sorts before every checkpoint: the "oldest"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert resume(out, "--max-steps", "2") == 0  # keep_checkpoints=2: rotation runs, the "oldest" is the user's
    assert (mine / "notes.txt").read_text() == "keep me"
    from adaperceiver.training.rundir import remove_checkpoint

    old = run_dir / "checkpoints" / "step_00000001"
    (old / "my_eval.json").write_text("{}")  # a user's file inside a checkpoint folder
    remove_checkpoint(old, run_dir)
    assert sorted(p.name for p in old.iterdir()) == ["my_eval.json"]


def test_resume_says_when_it_drops_metrics_rows(run, capsys, resume):
    out, run_dir = run
    (run_dir / "metrics.csv").write_text("step,epoch,split,loss\n1,0.5,train,2.0\n7,3.5,train,1.0\n")
    assert resume(out) == 0
    said = capsys.readouterr().out
    assert re.search(r"metrics\.csv: dropped 1 rows logged after step 1", said), said
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[1].startswith("1,") and not any(r.startswith("7,") for r in rows)


# --------------------------------------------------------------------------------------------------
# an unreadable item inside a DataLoader worker: one line naming the split, the item and its file
def _undecodable_png(path: Path) -> None:
    """Rewrite the PNG at ``path`` so that its chunk checksums hold (the folder's scan passes it) but its
    pixel data does not inflate: the error only shows when an item is loaded."""
    data = bytearray(path.read_bytes())
    i = data.index(b"IDAT") - 4
    n = int.from_bytes(data[i:i + 4], "big")
    body = bytearray(data[i + 8:i + 8 + n])
    body[2:] = bytes(b ^ 0x5A for b in body[2:])  # keep the zlib header, garble the stream
    data[i + 8:i + 8 + n] = body
    data[i + 8 + n:i + 12 + n] = zlib.crc32(bytes(data[i + 4:i + 8 + n])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_item_error_in_a_dataloader_worker_is_one_line(tmp_path, make_folder, capsys, cli_error, train_argv, workers):
    make_folder(tmp_path / "data")
    _undecodable_png(tmp_path / "data" / "val" / "dog" / "1.png")  # the train images are all read for the data config
    argv = train_argv(tmp_path, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--image-size", "8",
                      "--batch-size", "2", "--train-subset", "6", "--val-subset", "4", "--num-workers", workers)
    argv[argv.index("digits")] = "imagefolder"  # train_argv's own --dataset
    line = cli_error(argv, capsys)
    assert re.search(r"val item \d+: cannot read image .*dog/1\.png", line), line
    assert ("DataLoader worker" in line) == (workers != "0") and "Traceback" not in line, line


def test_debug_prints_the_worker_traceback_before_the_line(tmp_path, make_folder, capsys, train_argv):
    make_folder(tmp_path / "data")
    _undecodable_png(tmp_path / "data" / "val" / "dog" / "1.png")  # the train images are all read for the data config
    argv = train_argv(tmp_path, "--data-dir", str(tmp_path / "data"), "--image-size", "8", "--batch-size", "2",
                      "--train-subset", "6", "--val-subset", "4", "--num-workers", "1")
    argv[argv.index("digits")] = "imagefolder"
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Original Traceback" in err and "__getitem__" in err, err[-2000:]
    assert re.search(r"error: val item \d+: cannot read image", err.strip().splitlines()[-1])
