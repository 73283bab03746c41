"""Cluttered Fashion-MNIST generator: determinism, layout, labels, clutter sources, registry names, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from adaperceiver.data import FASHION_MNIST_DIR, ClutteredFashionMNIST, fashion_mnist, get_dataset

N_ITEMS = 13


def flat_items(n: int = N_ITEMS) -> tuple[np.ndarray, np.ndarray]:
    """Item k is a uniform square of grey value 10 (k + 1): every pixel tells which item it came from."""
    values = (10 * (np.arange(n) + 1)).astype(np.uint8)
    return np.broadcast_to(values[:, None, None], (n, 28, 28)).copy(), np.arange(n) % 10


def slow_render(ds: ClutteredFashionMNIST, i: int) -> np.ndarray:
    """The construction written out plainly, one piece at a time, for comparison with ``render``."""
    s, k = ds.canvas, ds.clutter_size
    out = np.zeros((s, s), np.uint8)
    y, x = ds.pos[i]
    out[y:y + 28, x:x + 28] = ds.items[ds.source[i]]
    for c in range(ds.clutter):
        cy, cx = ds.clutter_crop[i, c]
        py, px = ds.clutter_pos[i, c]
        piece = ds.items[ds.clutter_source[i, c], cy:cy + k, cx:cx + k]
        out[py:py + k, px:px + k] = np.maximum(out[py:py + k, px:px + k], piece)
    return out


@pytest.fixture
def fake_root(tmp_path):
    from test_data import write_idx

    rng = np.random.default_rng(1)
    for prefix, n in (("train", 11), ("t10k", 7)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", ((np.arange(n) * 3) % 10).astype(np.uint8))
    return tmp_path


def test_render_matches_the_plain_construction():
    images, labels = flat_items()
    ds = ClutteredFashionMNIST("train", canvas=60, clutter=6, clutter_size=9, length=40, seed=3,
                               images=images, labels=labels)
    batch = ds.render(range(len(ds)))
    assert batch.shape == (40, 60, 60) and batch.dtype == np.uint8
    for i in range(len(ds)):
        assert np.array_equal(batch[i], slow_render(ds, i)), i


def test_item_label_position_and_clutter_from_other_items():
    images, labels = flat_items()
    ds = ClutteredFashionMNIST("train", canvas=64, clutter=8, length=3 * N_ITEMS, images=images, labels=labels)
    assert np.array_equal(ds.source, np.arange(3 * N_ITEMS) % N_ITEMS)  # one epoch sees every item
    assert (ds.clutter_source != ds.source[:, None]).all()
    assert set(np.unique(ds.clutter_source)) == set(range(N_ITEMS))  # every other item can be a source
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, 64, 64) and x.dtype == torch.float32 and isinstance(y, int)
        assert y == labels[ds.source[i]]
        canvas = ds.render([i])[0]
        own = images[ds.source[i], 0, 0]
        top, left = ds.pos[i]
        # the placed item is there (clutter only brightens it), and nothing else is that bright unless clutter
        assert (canvas[top:top + 28, left:left + 28] >= own).all()
        others = {int(images[j, 0, 0]) for j in ds.clutter_source[i]}
        assert set(np.unique(canvas).tolist()) <= {0, int(own)} | others
        # every piece shows up somewhere unless a brighter piece covers it
        for c in range(ds.clutter):
            py, px = ds.clutter_pos[i, c]
            assert (canvas[py:py + 8, px:px + 8] >= images[ds.clutter_source[i, c], 0, 0]).all()


def test_same_seed_same_images_other_seed_or_split_differs(fake_root):
    a = ClutteredFashionMNIST("train", fake_root, seed=5)
    b = ClutteredFashionMNIST("train", fake_root, seed=5)
    c = ClutteredFashionMNIST("train", fake_root, seed=6)
    assert np.array_equal(a.render(range(len(a))), b.render(range(len(b))))
    assert not np.array_equal(a.render(range(len(a))), c.render(range(len(c))))
    val = ClutteredFashionMNIST("val", fake_root, seed=5)
    assert len(a) == 11 and len(val) == 7
    assert [val[i][1] for i in range(7)] == [(3 * i) % 10 for i in range(7)]  # val labels from the test files


def test_dataloader_batches_equal_single_items(fake_root):
    ds = ClutteredFashionMNIST("train", fake_root, canvas=56, length=20)
    x, y = next(iter(DataLoader(ds, batch_size=20, shuffle=False)))
    assert x.shape == (20, 1, 56, 56) and y.dtype == torch.int64
    singles = [ds[i] for i in range(20)]
    assert torch.equal(x, torch.stack([s[0] for s in singles]))
    assert y.tolist() == [s[1] for s in singles]
    assert torch.equal(ds[-1][0], singles[-1][0])


def test_registry_names_and_sizes(fake_root):
    ds = get_dataset("fashion-mnist-cluttered", "train", root=fake_root)
    assert isinstance(ds, ClutteredFashionMNIST) and ds.img_size == 64 and ds.in_chans == 1
    assert ds.classes[9] == "Ankle boot"
    assert get_dataset("fashion_mnist_cluttered56", "test", root=fake_root)[0][0].shape == (1, 56, 56)
    assert get_dataset("Fashion-MNIST-Cluttered60", "val", root=fake_root).img_size == 60
    assert get_dataset("fashion_mnist_cluttered", "train", root=fake_root, image_size=40)[0][0].shape == (1, 40, 40)
    assert len(get_dataset("fashion_mnist_cluttered", "train", root=fake_root, subset=4)) == 4


@pytest.mark.parametrize("kw, match", [
    (dict(canvas=20), "canvas must be an int >= 28"),
    (dict(clutter=-1), "clutter"),
    (dict(clutter_size=29), "clutter_size must be an int in"),
    (dict(seed=-2), "seed must be an int >= 0"),
    (dict(length=0), "length must be >= 1"),
])
def test_bad_options_name_themselves(fake_root, kw, match):
    with pytest.raises(ValueError, match=match):
        ClutteredFashionMNIST("train", fake_root, **kw)


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        get_dataset("fashion_mnist_cluttered", "train", root=tmp_path)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_test_split_keeps_the_item_pixels_and_labels():
    plain = fashion_mnist("val")
    ds = get_dataset("fashion_mnist_cluttered", "val")
    assert len(ds) == 10_000
    for i in (0, 1, 9_999):
        x, y = ds[i]
        assert y == plain[i][1]
        top, left = ds.pos[i]
        # pixels are normalised as in fashion_mnist; clutter can only brighten the item
        assert (x[0, top:top + 28, left:left + 28] >= plain[i][0][0] - 1e-6).all()
