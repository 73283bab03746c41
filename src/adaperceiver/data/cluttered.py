"""Cluttered Fashion-MNIST: one item placed at random on a larger canvas among clutter cut from other items.

This is the construction of Cluttered MNIST (Mnih et al., 2014, "Recurrent Models of Visual
Attention") applied to Fashion-MNIST: each image is a ``canvas`` x ``canvas`` black canvas holding
one 28x28 item of the split at a uniformly random position, plus ``clutter`` square pieces of
``clutter_size`` pixels cut at random from *other* items of the same split and pasted at random
positions (overlaps keep the brighter pixel). The label is the placed item's class. Only a small
part of the canvas carries the answer and the clutter looks like the answer's texture, so the
number of latent tokens and the depth of the model change accuracy, unlike on the 28x28 set.

Everything is deterministic from ``seed``: the layout of every image (item position, clutter
sources, crop offsets and positions) is drawn at construction in one vectorised call of a
``numpy`` generator seeded by ``(seed, split)``, and images are rendered on access. Image ``i``
shows item ``i % n`` of the split, so one epoch over the default length sees every item once.
``render`` draws any number of images at once (60,000 in about a second on one core).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .classification import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    builtin_data_config,
    check_split,
    read_fashion_mnist,
)

ITEM = 28  # Fashion-MNIST item side in pixels
_SPLIT_STREAM = {"train": 0, "val": 1}
# normalised value of every uint8 pixel (a table lookup is much faster than float maths on a busy CPU)
_PIXEL_VALUES = ((np.arange(256, dtype=np.float32) / 255.0 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]).astype(np.float32)


class CanvasDataset(Dataset):
    """Shared item access of the canvas datasets: a subclass renders uint8 canvases for item indices
    (``render``) and holds every item's label (``labels``, int64); items come out normalised, a batch
    rendered at once."""

    labels: np.ndarray

    def render(self, indices) -> np.ndarray:
        raise NotImplementedError

    def to_tensor(self, canvases: np.ndarray) -> Tensor:
        """uint8 ``(B, S, S)`` canvases -> normalised float32 ``(B, 1, S, S)``."""
        return torch.from_numpy(_PIXEL_VALUES[canvases][:, None])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range [0, {len(self)})")
        i = i % len(self)
        return self.to_tensor(self.render([i]))[0], int(self.labels[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """A whole batch rendered at once (``DataLoader`` calls this instead of ``__getitem__`` per item)."""
        idx = np.asarray(indices, dtype=np.int64) % len(self)
        return list(zip(self.to_tensor(self.render(idx)), self.labels[idx].tolist()))


class ClutteredFashionMNIST(CanvasDataset):
    """Fashion-MNIST items on a ``canvas`` px canvas among ``clutter`` pieces cut from other items.

    Yields ``(image (1, canvas, canvas) float32, label int)``; pixels are normalised with the
    Fashion-MNIST statistics, so an item's pixels get the same values as in ``fashion_mnist``.
    ``length`` defaults to the split's size (60,000 train / 10,000 val); image ``i`` shows item
    ``i % n``. ``images``/``labels`` (uint8 ``(n, 28, 28)`` / int64 ``(n,)``) may be given instead of
    reading the IDX files from ``root``.
    """

    classes = FASHION_MNIST_CLASSES
    in_chans = 1

    def __init__(self, split: str = "train", root: str | Path | None = None, canvas: int = 64, clutter: int = 8,
                 clutter_size: int = 8, length: int | None = None, seed: int = 0,
                 images: np.ndarray | None = None, labels: np.ndarray | None = None):
        split = check_split(split)
        if not isinstance(canvas, int) or canvas < ITEM:
            raise ValueError(f"canvas must be an int >= {ITEM} (one Fashion-MNIST item), got {canvas!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if not isinstance(clutter, int) or clutter < 0:
            raise ValueError(f"clutter (pieces per image) must be an int >= 0, got {clutter!r}")
        if not isinstance(clutter_size, int) or not 1 <= clutter_size <= ITEM:
            raise ValueError(f"clutter_size must be an int in [1, {ITEM}], got {clutter_size!r}")
        if images is None:
            images, labels = _read_split(split, root)
        elif labels is None or len(images) != len(labels) or np.asarray(images).shape[1:] != (ITEM, ITEM):
            raise ValueError(f"images must be (n, {ITEM}, {ITEM}) uint8 with n labels")
        self.items = np.ascontiguousarray(images, dtype=np.uint8)
        self.item_labels = np.asarray(labels, dtype=np.int64)
        n = len(self.items)
        if clutter and n < 2:
            raise ValueError("clutter is cut from other items, so the split needs at least 2 items")
        length = n if length is None else int(length)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.split, self.canvas, self.clutter, self.clutter_size, self.seed = split, canvas, clutter, clutter_size, seed
        self.img_size = canvas
        self.data_config = builtin_data_config("fashion_mnist", canvas, FASHION_MNIST_CLASSES)
        self.source = np.arange(length, dtype=np.int64) % n  # the placed item of every image

        rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
        self.pos = rng.integers(0, canvas - ITEM + 1, size=(length, 2), dtype=np.int32)
        # clutter source: any item but the placed one (draw from n - 1 and skip over it)
        other = rng.integers(0, max(n - 1, 1), size=(length, clutter), dtype=np.int64)
        self.clutter_source = other + (other >= self.source[:, None])
        self.clutter_crop = rng.integers(0, ITEM - clutter_size + 1, size=(length, clutter, 2), dtype=np.int32)
        self.clutter_pos = rng.integers(0, canvas - clutter_size + 1, size=(length, clutter, 2), dtype=np.int32)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> np.ndarray:
        """int64 ``(length,)``: the class of every image's placed item."""
        return self.item_labels[self.source]

    def render(self, indices: np.ndarray | list[int] | range) -> np.ndarray:
        """uint8 canvases ``(len(indices), canvas, canvas)`` of the given images, drawn all at once."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"image index out of range [0, {len(self)})")
        b, s, k = len(idx), self.canvas, self.clutter_size
        out = np.zeros((b, s, s), dtype=np.uint8)
        bi = np.arange(b)[:, None, None]
        ar_item, ar_k = np.arange(ITEM), np.arange(k)
        rows = self.pos[idx, 0][:, None, None] + ar_item[None, :, None]
        cols = self.pos[idx, 1][:, None, None] + ar_item[None, None, :]
        out[bi, rows, cols] = self.items[self.source[idx]]
        for c in range(self.clutter):
            src = self.clutter_source[idx, c]
            cy, cx = self.clutter_crop[idx, c, 0], self.clutter_crop[idx, c, 1]
            piece = self.items[src[:, None, None], cy[:, None, None] + ar_k[None, :, None],
                               cx[:, None, None] + ar_k[None, None, :]]
            r = self.clutter_pos[idx, c, 0][:, None, None] + ar_k[None, :, None]
            q = self.clutter_pos[idx, c, 1][:, None, None] + ar_k[None, None, :]
            out[bi, r, q] = np.maximum(out[bi, r, q], piece)
        return out



def _read_split(split: str, root: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_fashion_mnist(split, root)
    if images.shape[1:] != (ITEM, ITEM):
        raise ValueError(f"Fashion-MNIST images in {root or FASHION_MNIST_DIR} are not {ITEM}x{ITEM}: {images.shape}")
    return images, labels


def cluttered_fashion_mnist(split: str, root: str | Path | None = None, canvas: int = 64, **kw) -> ClutteredFashionMNIST:
    """The train or val (= official test) split of :class:`ClutteredFashionMNIST`; ``kw`` as its constructor."""
    return ClutteredFashionMNIST(split, root, canvas=canvas, **kw)


__all__ = ["ClutteredFashionMNIST", "cluttered_fashion_mnist"]
