"""Shared fixtures. Tests take these as arguments; nothing imports this module."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from adaperceiver import AdaPerceiverConfig
from adaperceiver.cli import main

# a 2-block model small enough that a training step takes milliseconds (model_overrides / --set)
_TINY_OVERRIDES = dict(patch_size=4, embed_dim=16, num_heads=2, depth=2, num_latents=8, token_grans=(4, 8), widths=(8, 16))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (modules opt in with ``pytestmark``): on a shared 2-core machine
    small ops on several threads stall each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_config(**kw) -> AdaPerceiverConfig:
    """A small model with non-trivial LayerScale so that every block matters in the tests."""
    base = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, num_heads=4, depth=3, ffn_ratio=2.57,
                num_latents=16, token_grans=(4, 8, 12, 16), widths=(16, 24, 32), ls_init=0.5, num_classes=5)
    base.update(kw)
    return AdaPerceiverConfig(**base)


# every learning-efficiency option on (docs/training.md, "Learning efficiency"); the model tests run with them too
LEARNING_OPTIONS = dict(head_norm=True, embed_mlp=False)


def _variant_config(name):
    """``"classification"`` / ``"dense"``, optionally ``+options``: the learning options on (mean read-out
    for classification)."""
    task, _, opts = name.partition("+")
    extra = dict(LEARNING_OPTIONS, readout="mean" if task == "classification" else "query") if opts else {}
    return _tiny_config(task=task, num_classes=5 if task == "classification" else 6, **extra)


def _loud_init(model, seed=0):
    """Re-initialise with fan-in scaled weights so that masks, RoPE and widths visibly matter
    (the default 0.02 init makes most configurations nearly equal and would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "pos_embed" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("gamma") or (p.dim() == 1 and "norm" in name and name.endswith("weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_((0.5 if "pos_embed" in name else 0.1) * torch.randn(p.shape, generator=g))
    return model


def _make_folder(root, corrupt: bool = False):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image, ignored")
    if corrupt:
        (root / "val" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(**overrides) -> AdaPerceiverConfig``: the small test model's config."""
    return _tiny_config


@pytest.fixture(scope="session")
def variant_config():
    """``variant_config("classification" | "dense" [+ "+options"]) -> AdaPerceiverConfig``."""
    return _variant_config


@pytest.fixture(scope="session")
def loud_init():
    """``loud_init(model, seed=0) -> model``: weights large enough that every axis changes the output."""
    return _loud_init


@pytest.fixture(scope="session")
def make_folder():
    """``make_folder(root, corrupt=False)``: a 2-class ImageFolder tree (train/val) of small PNGs."""
    return _make_folder


def _train_argv(out, *extra, name="run"):
    tiny_set = [a for k, v in _TINY_OVERRIDES.items() for a in ("--set", f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}")]
    return ["train", "--dataset", "digits", "--train-subset", "32", "--val-subset", "16", "--batch-size", "16",
            "--epochs", "1", "--warmup-steps", "1", "--no-progress", "--out", str(out), "--name", name, *tiny_set, *extra]


def _cli_error(argv, capsys) -> str:
    """Run the CLI in-process; assert exit status 2 and ONE error line (argparse usage lines aside)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses before any command runs
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    return lines[0]


@pytest.fixture(scope="session")
def tiny_overrides():
    """Model config overrides of a 2-block model that trains in milliseconds (grans 4, 8; widths 8, 16)."""
    return dict(_TINY_OVERRIDES)


@pytest.fixture(scope="session")
def train_argv():
    """``train_argv(out, *flags, name="run") -> argv``: ``adaperceiver train`` of the tiny model on 32 digits."""
    return _train_argv


@pytest.fixture(scope="session")
def cli_error():
    """``cli_error(argv, capsys) -> line``: run the CLI, assert exit 2 and exactly one error line, return it."""
    return _cli_error


def _write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture(scope="session")
def write_idx():
    """``write_idx(path, array, compress=True)``: an IDX file (gzipped unless ``compress=False``), as
    Fashion-MNIST ships them."""
    return _write_idx
