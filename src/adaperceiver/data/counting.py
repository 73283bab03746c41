"""Counting Fashion-MNIST: nine small items on a 64 px canvas; the label is how many of them are tops.

A task where the cost of a setting should show in its accuracy: the answer depends on every item on
the canvas, not on one, so reading more of the image (more tokens) and combining more (more blocks)
pays. It is derived from Fashion-MNIST pixels only (no other data): each image is a ``64 x 64`` black
canvas cut into a 4 x 4 grid of 16 px cells; nine cells, chosen at random, each hold one Fashion-MNIST
item of the split shrunk to 14 px (2 x 2 mean) at a random offset of 0-2 px inside its cell, so items
never overlap. The label ``c`` (0-9, uniform) is the number of *tops* among the nine: items of class
T-shirt/top, Pullover, Coat or Shirt; the other ``9 - c`` items are drawn from the six other classes
(Trouser, Dress, Sandal, Sneaker, Bag, Ankle boot). Chance is 10 %.

Everything is deterministic from ``(seed, split)``: the layouts are drawn at construction with one
``numpy`` generator and images are rendered on access (like :mod:`adaperceiver.data.cluttered`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .classification import builtin_data_config, check_split
from .cluttered import CanvasDataset, _read_split

CANVAS, CELL, SMALL, SLOTS = 64, 16, 14, 9
CELLS = (CANVAS // CELL) ** 2  # 16 cells of the 4 x 4 grid
TOPS = (0, 2, 4, 6)  # T-shirt/top, Pullover, Coat, Shirt
_SPLIT_STREAM = {"train": 0, "val": 1}


class CountingFashionMNIST(CanvasDataset):
    """Nine 14 px Fashion-MNIST items on a 64 px canvas; the label is the number of tops (0-9).

    Yields ``(image (1, 64, 64) float32, label int)`` normalised with the Fashion-MNIST statistics.
    ``length`` defaults to the split's size; ``images``/``labels`` (uint8 ``(n, 28, 28)`` / ``(n,)``)
    may be given instead of reading the IDX files from ``root``.
    """

    classes = tuple(f"{c} tops" for c in range(SLOTS + 1))
    in_chans = 1
    img_size = CANVAS

    def __init__(self, split: str = "train", root: str | Path | None = None, length: int | None = None,
                 seed: int = 0, images: np.ndarray | None = None, labels: np.ndarray | None = None):
        split = check_split(split)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if images is None:
            images, labels = _read_split(split, root)
        images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise ValueError("images must be (n, 28, 28) uint8 with n labels")
        is_top = np.isin(labels, TOPS)
        tops, others = np.flatnonzero(is_top), np.flatnonzero(~is_top)
        if not len(tops) or not len(others):
            raise ValueError(f"the split needs items of the top classes {TOPS} and of the other classes")
        # 2 x 2 mean: 28 px -> 14 px (rounded to the nearest grey level)
        self.items = ((images.reshape(-1, SMALL, 2, SMALL, 2).astype(np.uint16).sum((2, 4)) + 2) // 4).astype(np.uint8)
        length = len(images) if length is None else int(length)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.split, self.seed = split, seed
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
        self.count = rng.integers(0, SLOTS + 1, size=length)
        slot = np.arange(SLOTS)[None, :]
        top_pick = tops[rng.integers(0, len(tops), size=(length, SLOTS))]
        other_pick = others[rng.integers(0, len(others), size=(length, SLOTS))]
        self.source = np.where(slot < self.count[:, None], top_pick, other_pick)  # (length, 9) item indices
        self.cell = np.argsort(rng.random((length, CELLS)), axis=1)[:, :SLOTS]  # distinct cells
        self.offset = rng.integers(0, CELL - SMALL + 1, size=(length, SLOTS, 2))
        self.data_config = builtin_data_config("fashion_mnist", CANVAS, self.classes)  # how a trained model reads

    def __len__(self) -> int:
        return len(self.count)

    @property
    def labels(self) -> np.ndarray:
        """int64 ``(length,)``: the number of tops on every canvas."""
        return self.count.astype(np.int64)

    def render(self, indices) -> np.ndarray:
        """uint8 canvases ``(len(indices), 64, 64)`` of the given images, drawn all at once."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"image index out of range [0, {len(self)})")
        out = np.zeros((len(idx), CANVAS, CANVAS), dtype=np.uint8)
        bi, ar = np.arange(len(idx))[:, None, None], np.arange(SMALL)
        per_row = CANVAS // CELL
        for s in range(self.source.shape[1]):
            cell = self.cell[idx, s]
            top = (cell // per_row) * CELL + self.offset[idx, s, 0]
            left = (cell % per_row) * CELL + self.offset[idx, s, 1]
            out[bi, top[:, None, None] + ar[None, :, None], left[:, None, None] + ar[None, None, :]] = \
                self.items[self.source[idx, s]]
        return out



class OddOneOutFashionMNIST(CountingFashionMNIST):
    """``items`` (default nine) 14 px items in distinct cells, all of one class but one; the label is the
    grid cell (0-15, row-major over the 4 x 4 cells) of the odd one.

    A relational task: no single item says where the odd one is, so a setting must hold the class of
    every occupied cell and compare them (more latents to hold, more blocks to compare). The majority
    and the odd class are drawn uniformly (different), the odd item's slot uniformly among the items;
    layouts, items and offsets are deterministic from ``(seed, split)`` like :class:`CountingFashionMNIST`
    (nine items use the counting layout itself; 10-16 items draw cells of their own).
    """

    classes = tuple(f"cell {r},{c}" for r in range(CANVAS // CELL) for c in range(CANVAS // CELL))

    def __init__(self, split: str = "train", root: str | Path | None = None, length: int | None = None,
                 seed: int = 0, items: int = SLOTS, images: np.ndarray | None = None,
                 labels: np.ndarray | None = None):
        if not isinstance(items, int) or not SLOTS <= items <= CELLS:
            raise ValueError(f"items must be an int from {SLOTS} to {CELLS} (one per cell), got {items!r}")
        if images is None:
            images, labels = _read_split(check_split(split), root)
        super().__init__(split, root, length, seed, images, labels)  # the layouts: cells and offsets
        labels = np.asarray(labels, dtype=np.int64)
        n = len(self.count)
        if items != SLOTS:  # more items than the counting layout holds: a layout of their own
            rng = np.random.default_rng([seed, _SPLIT_STREAM[self.split], 2])
            self.cell = np.argsort(rng.random((n, CELLS)), axis=1)[:, :items]
            self.offset = rng.integers(0, CELL - SMALL + 1, size=(n, items, 2))
        by_class = [np.flatnonzero(labels == k) for k in range(10)]
        if any(not len(c) for c in by_class):
            raise ValueError("the split needs items of all ten classes")
        rng = np.random.default_rng([seed, _SPLIT_STREAM[self.split], 1])
        major = rng.integers(0, 10, size=n)
        minor = (major + rng.integers(1, 10, size=n)) % 10
        cls = np.repeat(major[:, None], items, axis=1)
        odd = rng.integers(0, items, size=n)
        cls[np.arange(n), odd] = minor
        sizes = np.array([len(c) for c in by_class])
        pick = (rng.random((n, items)) * sizes[cls]).astype(np.int64)
        self.source = np.array([by_class[k][p] for k, p in zip(cls.ravel(), pick.ravel())]).reshape(n, items)
        self.odd_cell = self.cell[np.arange(n), odd].astype(np.int64)

    @property
    def labels(self) -> np.ndarray:
        """int64 ``(length,)``: the cell of the odd item on every canvas."""
        return self.odd_cell


def counting_fashion_mnist(split: str, root: str | Path | None = None, **kw) -> CountingFashionMNIST:
    """The train or val (= official test) split of :class:`CountingFashionMNIST`; ``kw`` as its constructor."""
    return CountingFashionMNIST(split, root, **kw)


def odd_one_out_fashion_mnist(split: str, root: str | Path | None = None, **kw) -> OddOneOutFashionMNIST:
    """The train or val (= official test) split of :class:`OddOneOutFashionMNIST`; ``kw`` as its constructor."""
    return OddOneOutFashionMNIST(split, root, **kw)


__all__ = ["CountingFashionMNIST", "OddOneOutFashionMNIST", "counting_fashion_mnist", "odd_one_out_fashion_mnist"]
