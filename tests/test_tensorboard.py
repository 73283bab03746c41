"""--logger tensorboard: the metrics.csv rows and the sweep (per-configuration metrics, Pareto figure) as
TensorBoard events, read back with TensorBoard's own event reader."""

from __future__ import annotations

import csv
import sys

import pytest

from adaperceiver.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def test_training_and_sweep_events_read_back(tmp_path, capsys, train_argv):
    pytest.importorskip("sklearn")  # the digits dataset
    assert main(train_argv(tmp_path, "--logger", "tensorboard", "--log-every", "1", name="tb")) == 0
    run = tmp_path / "tb"
    with open(run / "metrics.csv") as f:  # csv stays on
        rows = list(csv.DictReader(f))
    acc = _events(run / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/img_s", "val/acc1", "val/loss"} <= tags, tags
    for split, key in (("train", "loss"), ("train", "lr"), ("val", "acc1")):
        column = key if split == "train" else f"val_{key}"
        want = [(int(r["step"]), float(r[column])) for r in rows if r["split"] == split]
        got = [(e.step, e.value) for e in acc.Scalars(f"{split}/{key}")]
        assert [s for s, _ in got] == [s for s, _ in want] and want
        assert all(abs(g - w) <= 1e-5 * max(1.0, abs(w)) for (_, g), (_, w) in zip(got, want)), (key, got, want)

    pytest.importorskip("matplotlib")  # the Pareto figure
    assert main(["sweep", "--model", str(run), "--data", "digits", "--limit", "16", "--batch-size", "16",
                 "--latency-batch-sizes", "1", "--no-progress", "--logger", "tensorboard"]) == 0
    capsys.readouterr()
    with open(run / "sweep" / "sweep.csv") as f:
        sweep = list(csv.DictReader(f))
    acc = _events(run / "sweep" / "tensorboard")
    final_step = int(rows[-1]["step"])
    for r in sweep:  # every configuration's accuracy, at the training step of the swept weights
        (event,) = acc.Scalars(f"sweep/t{r['tokens']}_d{r['depth']}_w{r['width']}/acc1")
        assert event.step == final_step and abs(event.value - float(r["acc1"])) < 1e-4
    (image,) = acc.Images("sweep/pareto")
    from PIL import Image

    with Image.open(run / "sweep" / "pareto.png") as png:
        assert (image.width, image.height) == png.size and image.encoded_image_string[:4] == b"\x89PNG"


def test_missing_tensorboard_is_one_line_before_training(tmp_path, capsys, train_argv, cli_error, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    line = cli_error(train_argv(tmp_path, "--logger", "tensorboard", name="no_tb"), capsys)
    assert "pip install 'adaperceiver[tensorboard]'" in line, line
    assert not (tmp_path / "no_tb" / "metrics.csv").exists()
    assert "invalid choice: 'wandb'" in cli_error(train_argv(tmp_path, "--logger", "wandb"), capsys)
