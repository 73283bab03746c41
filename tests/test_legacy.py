"""A run directory written by adaperceiver 0.1.0 (tests/fixtures/legacy_v0.1, made before the 0.2 refactor)
still loads, predicts exactly as it did, and resumes."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaperceiver import from_pretrained
from adaperceiver.cli import main
from adaperceiver.data import FASHION_MNIST_DIR

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v0.1"


def test_legacy_checkpoint_predicts_identically():
    model = from_pretrained(LEGACY / "run").eval()
    expected = load_file(LEGACY / "expected.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(expected["images"]), expected["full"], rtol=0, atol=1e-6)
        torch.testing.assert_close(model(expected["images"], tokens=4, depth=1, width=8), expected["small"], rtol=0, atol=1e-6)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_legacy_run_resumes(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "run", run)
    main(["train", "--resume", "--out", str(tmp_path), "--name", "run", "--no-progress"])
    model = from_pretrained(run)
    meta = json.loads((run / "config.json").read_text())
    assert meta["step"] == 8  # 256 images / batch 32: the epoch the legacy run stopped inside, finished
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:3]] == ["2", "4"]  # the legacy rows are kept
    assert model.cfg.embed_dim == 16
