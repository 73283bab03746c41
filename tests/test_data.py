"""Offline datasets: IDX reading, Fashion-MNIST layout, ImageFolder, digits, batched augmentation, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from adaperceiver.data import (
    FASHION_MNIST_DIR,
    RandomCropFlip,
    get_dataset,
    list_datasets,
    read_idx,
)


@pytest.fixture
def fake_fmnist(tmp_path, write_idx):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return tmp_path


def test_read_idx_roundtrip(tmp_path, write_idx):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "a.idx", a, compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), a)


def test_fashion_mnist_from_data_dir(fake_fmnist):
    train = get_dataset("fashion-mnist", "train", root=fake_fmnist)
    val = get_dataset("fashion_mnist", "test", root=fake_fmnist)
    assert len(train) == 12 and len(val) == 5
    x, y = train[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
    assert train.in_chans == 1 and train.img_size == 28 and train.classes[9] == "Ankle boot"
    # normalised with the dataset statistics: pixel 0 maps below zero, 255 above
    assert x.min() < 0 < x.max()
    assert get_dataset("fashion_mnist", "train", root=fake_fmnist, image_size=16)[0][0].shape == (1, 16, 16)


@pytest.mark.parametrize("damage", ["not_gzip", "truncated", "bad_magic"])
def test_corrupt_idx_names_the_file(fake_fmnist, damage):
    path = fake_fmnist / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    if damage == "not_gzip":
        path.write_bytes(b"definitely not gzip")
    elif damage == "truncated":
        path.write_bytes(gzip.compress(raw[:-100]))
    else:
        path.write_bytes(gzip.compress(b"\x01\x02" + raw[2:]))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        get_dataset("fashion_mnist", "train", root=fake_fmnist)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        get_dataset("fashion_mnist", "train", root=tmp_path)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split():
    ds = get_dataset("fashion_mnist", "val")
    assert len(ds) == 10_000 and ds[0][0].shape == (1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert abs(float(ds.images.mean())) < 0.1 and abs(float(ds.images.std()) - 1) < 0.1


def test_image_folder(tmp_path, make_folder):
    make_folder(tmp_path)
    train = get_dataset("imagefolder", "train", root=tmp_path, image_size=8)
    val = get_dataset("imagefolder", "val", root=tmp_path, image_size=8, in_chans=1)
    assert train.classes == val.classes == ("cat", "dog")
    assert len(train) == 6 and len(val) == 4
    x, y = train[4]
    assert x.shape == (3, 8, 8) and y == 1
    # mean / std are measured on the training images with the same pipeline: normalised pixels ~ (0, 1)
    every = torch.stack([train[i][0] for i in range(len(train))])
    assert every.mean((0, 2, 3)).abs().max() < 1e-3 and (every.std((0, 2, 3)) - 1).abs().max() < 0.05
    assert train.data_config.class_names == ("cat", "dog") and train.data_config.in_chans == 3
    assert val[0][0].shape == (1, 8, 8)


def test_corrupt_image_names_the_file(tmp_path, make_folder):
    make_folder(tmp_path, corrupt=True)
    with pytest.raises(ValueError, match=r"broken.png: cannot identify image file \(1 unreadable"):
        get_dataset("imagefolder", "val", root=tmp_path)
    val = get_dataset("imagefolder", "val", root=tmp_path, on_corrupt="skip")
    assert len(val) == 4 and [Path(p).name for p in val.meta["skipped"]] == ["broken.png"]
    # a file whose header passes but whose pixels are cut off is named when it is read
    good = val.samples[0][0]
    good.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match=good.name):
        val[0]


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="root"):
        get_dataset("imagefolder", "train")
    with pytest.raises(FileNotFoundError, match="train"):
        get_dataset("imagefolder", "train", root=tmp_path)


def test_bad_names_list_allowed_values():
    with pytest.raises(ValueError, match="fashion_mnist"):
        get_dataset("cifar10", "train")
    with pytest.raises(ValueError, match="'train', 'val'"):
        get_dataset("digits", "holdout")
    assert {"fashion_mnist", "imagefolder", "digits"} <= set(list_datasets())


def test_digits_split_and_subset():
    pytest.importorskip("sklearn")
    train, val = get_dataset("digits", "train"), get_dataset("digits", "val")
    assert len(train) + len(val) == 1797 and train[0][0].shape == (1, 8, 8)
    sub = get_dataset("digits", "train", subset=50)
    assert len(sub) == 50 and sub.classes == train.classes and sub.in_chans == 1
    assert get_dataset("digits", "train", image_size=16)[0][0].shape == (1, 16, 16)


def test_random_crop_flip_is_a_shifted_window_and_deterministic():
    x = torch.randn(6, 2, 5, 7)
    aug = RandomCropFlip(padding=2, flip=False)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):  # every output is some 5x7 window of the zero-padded input
        windows = [padded[i, :, dy:dy + 5, dx:dx + 7] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(a[i], w) for w in windows)
    flipped = RandomCropFlip(padding=0, flip=True)(x, torch.Generator().manual_seed(0))
    for i in range(6):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    assert not torch.equal(flipped, x)  # with 6 samples, some flip under this seed


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_as_a_png_folder_gives_the_builtin_tensors(tmp_path):
    from PIL import Image

    from adaperceiver.data.classification import read_fashion_mnist

    builtin = get_dataset("fashion_mnist", "val")
    images, labels = read_fashion_mnist("val")
    for i in range(30):  # benchmarks/fmnist_to_folder.py's layout, first 30 test images
        d = tmp_path / "val" / f"{int(labels[i]):02d}_c"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], "L").save(d / f"{i:05d}.png")
    folder = get_dataset("imagefolder", "val", root=tmp_path, data_config=builtin.data_config)
    assert len(folder) == 30
    for j, (path, label) in enumerate(folder.samples):  # the same pixels, normalised the same way
        i = int(path.stem)
        assert folder.classes[label] == f"{builtin[i][1]:02d}_c"
        torch.testing.assert_close(folder[j][0], builtin[i][0], atol=1e-6, rtol=0)
