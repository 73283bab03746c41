"""Offline datasets and batched augmentation.

``get_dataset(name, split, root=None, ...)`` returns a ``torch.utils.data.Dataset`` of
``(normalised float image (C, H, W), int label)`` with ``classes``, ``in_chans`` and ``img_size``
attributes. Nothing is ever downloaded.

=================  ==================================================================  =========
name               source                                                              ``root``
=================  ==================================================================  =========
``fashion_mnist``  Debian ``dataset-fashion-mnist`` IDX files (60k train / 10k val)    optional
``imagefolder``    your ``root/train/<class>/*`` + ``root/val/<class>/*``, or            required
                   ``root/<class>/*`` split by ``val_fraction`` (:mod:`.folder`)
``digits``         scikit-learn ``load_digits`` (1,797 8x8 images, for quick tests)    unused
``fashion_mnist_   Fashion-MNIST items on a 64 px canvas among clutter cut from other  optional
cluttered``        items (:mod:`adaperceiver.data.cluttered`); ``..._cluttered56`` /
                   ``..._cluttered60`` use smaller canvases; ``image_size`` sets the
                   canvas (the item stays 28 px)
``fashion_mnist_   nine 14 px Fashion-MNIST items on a 64 px canvas; the label is the  optional
count64``          number of tops among them (:mod:`adaperceiver.data.counting`)
``fashion_mnist_   the same layout, eight items of one class and one of another; the   optional
odd64``            label is the grid cell (0-15) of the odd one (relational)
``fashion_mnist_   the odd-one-out task with 13 / 16 items (all of one class but one)   optional
odd64x13``, ``..x16``
=================  ==================================================================  =========

Names are case-insensitive and ``-`` may stand for ``_`` (``fashion-mnist-cluttered``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UserError
from .classification import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    TensorImageDataset,
    check_split,
    digits,
    fashion_mnist,
    read_idx,
)
from .cluttered import ClutteredFashionMNIST, cluttered_fashion_mnist
from .counting import CountingFashionMNIST, OddOneOutFashionMNIST, counting_fashion_mnist, odd_one_out_fashion_mnist
from .dense import DENSE_DATASETS
from .folder import ImageFolderDataset

_ALIASES = {"fashionmnist": "fashion_mnist", "image_folder": "imagefolder", "folder": "imagefolder"}


def _imagefolder(split: str, root: str | Path | None = None, image_size: int | None = None,
                 in_chans: int | None = None, **folder_options) -> ImageFolderDataset:
    if root is None:
        raise UserError("the 'imagefolder' dataset needs root: a folder holding train/<class>/ and val/<class>/, "
                        "or <class>/ folders split with val_fraction")
    return ImageFolderDataset(root, split, image_size=image_size, in_chans=in_chans, **folder_options)


def _cluttered(canvas: int) -> Callable[..., Dataset]:
    def build(split: str, root: str | Path | None = None, image_size: int | None = None, in_chans: int | None = None):
        return cluttered_fashion_mnist(split, root, canvas=image_size or canvas)
    return build


def _odd_one_out(items: int) -> Callable[..., Dataset]:
    def build(split: str, root: str | Path | None = None, image_size: int | None = None, in_chans: int | None = None):
        return odd_one_out_fashion_mnist(split, root, items=items)
    return build


DATASETS: dict[str, Callable[..., Dataset]] = {
    "fashion_mnist": lambda split, root=None, image_size=None, in_chans=None: fashion_mnist(split, root, image_size),
    "imagefolder": _imagefolder,
    "digits": lambda split, root=None, image_size=None, in_chans=None: digits(split, root, image_size),
    "fashion_mnist_cluttered": _cluttered(64),
    "fashion_mnist_cluttered56": _cluttered(56),
    "fashion_mnist_cluttered60": _cluttered(60),
    "fashion_mnist_count64": lambda split, root=None, image_size=None, in_chans=None: counting_fashion_mnist(split, root),
    "fashion_mnist_odd64": _odd_one_out(9),
    "fashion_mnist_odd64x13": _odd_one_out(13),
    "fashion_mnist_odd64x16": _odd_one_out(16),
    **DENSE_DATASETS,  # segmentation / depth sets: adaperceiver.data.dense
}


def canonical_name(name: str) -> str:
    """The registry key of a dataset name (case-insensitive, ``-`` for ``_``, aliases resolved)."""
    key = name.lower().replace("-", "_")
    return _ALIASES.get(key, key)


def list_datasets() -> list[str]:
    return sorted(DATASETS)


class SubsetDataset(Dataset):
    """The first ``n`` items of a fixed (seeded) shuffle of ``base``: a quick, class-mixed subset."""

    def __init__(self, base: Dataset, n: int, seed: int = 0):
        if n < 1:
            raise ValueError(f"subset size must be >= 1, got {n}")
        order = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed))
        self.base, self.indices = base, order[: min(n, len(base))].tolist()
        for attr in ("classes", "in_chans", "img_size", "num_classes", "data_config", "meta"):  # what the dataset says about itself
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


def get_dataset(name: str, split: str, root: str | Path | None = None, *, image_size: int | None = None,
                in_chans: int | None = None, subset: int | None = None, **folder_options) -> Dataset:
    """Build dataset ``name`` for ``split`` (``"train"`` or ``"val"``; ``"test"`` means ``"val"``).

    ``image_size`` resizes (square); ``in_chans`` picks grey (1) or RGB (3) for image folders;
    ``subset`` keeps a fixed random subset of that many items. ``folder_options`` go to
    :class:`ImageFolderDataset` (``data_config``, ``val_fraction``, ``split_seed``, ``on_corrupt``,
    ``transform``) and are refused for other datasets.
    """
    key = canonical_name(name)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {list_datasets()}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise ValueError(f"subset must be an int >= 1 (or None for the whole split), got {subset!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be an int >= 1 (or None for the dataset's size), got {image_size!r}")
    if folder_options and key != "imagefolder":
        raise ValueError(f"options {sorted(folder_options)} are for image folders, not dataset {name!r}")
    ds = DATASETS[key](check_split(split), root=root, image_size=image_size, in_chans=in_chans, **folder_options)
    return SubsetDataset(ds, subset) if subset is not None else ds


@dataclass
class RandomCropFlip:
    """Per-sample random crop after zero padding, plus an optional horizontal flip, on a whole batch.

    Works on ``(B, C, H, W)`` tensors on any device and draws from the given generator, so the
    augmentation of a step is a pure function of (seed, step): resumed runs see the same images.
    Padding is with zeros, i.e. with the normalised mean colour.
    """

    padding: int = 2
    flip: bool = True

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        b, _, h, w = x.shape
        if self.padding > 0:
            p = self.padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
            cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
            bidx = torch.arange(b, device=x.device).view(b, 1, 1, 1)
            cidx = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
            x = padded[bidx, cidx, rows, cols]
        if self.flip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        return x


__all__ = [
    "ClutteredFashionMNIST", "CountingFashionMNIST", "OddOneOutFashionMNIST",
    "DATASETS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "ImageFolderDataset", "RandomCropFlip",
    "SubsetDataset",
    "TensorImageDataset", "canonical_name",
    "cluttered_fashion_mnist", "digits", "fashion_mnist", "get_dataset", "list_datasets", "read_idx",
]
