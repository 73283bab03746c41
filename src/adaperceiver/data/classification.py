"""Image-classification datasets that need no download: Fashion-MNIST and sklearn digits (image folders:
:mod:`adaperceiver.data.folder`).

Every dataset yields ``(image, label)`` with ``image`` a normalised float tensor ``(C, H, W)`` and
``label`` an int, and exposes ``classes`` (names), ``in_chans``, ``img_size`` and ``data_config`` (how
its images were prepared, which a model trained on it keeps). Augmentation is
not done here but per batch in the training loop (:class:`adaperceiver.data.RandomCropFlip`), so it
is deterministic from the run's seed and step and runs on the training device.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..models.data_config import DATASET_STATS, DataConfig

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = DATASET_STATS["fashion_mnist"]
SPLITS = ("train", "val")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def check_split(split: str) -> str:
    """``"test"`` is accepted as another name for the held-out ``"val"`` split."""
    split = "val" if split == "test" else split
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} (or 'test'), got {split!r}")
    return split


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip-compressed when the name ends in ``.gz``).

    Raises ``ValueError`` naming the file when it is truncated, not IDX, or not valid gzip.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no IDX file at {path}")
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"cannot read {path}: not a valid gzip file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"cannot read {path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"cannot read {path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"cannot read {path}: IDX header promises {expected} bytes of data for shape {shape}, "
                         f"file has {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean, dtype=images.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(-1, 1, 1)
    return (images - m) / s


class TensorImageDataset(Dataset):
    """A whole dataset held in memory as one normalised float tensor ``(N, C, H, W)`` plus labels."""

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], data_config: DataConfig | None = None):
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"need images (N, C, H, W) and N labels, got {tuple(images.shape)} and {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.classes = tuple(classes)
        self.data_config = data_config
        if self.labels.numel() and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must lie in [0, {len(self.classes) - 1}] for {len(self.classes)} classes, got "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}]")

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def img_size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


def _resize(images: Tensor, size: int | None) -> Tensor:
    if size is None or size == images.shape[-1] == images.shape[-2]:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def builtin_data_config(name: str, size: int, classes: Sequence[str]) -> DataConfig:
    """How a built-in grey set is prepared: its own mean / std, the whole image resized to ``size``."""
    mean, std = DATASET_STATS[name]
    return DataConfig(size, 1, mean, std, "bilinear", 1.0, "squash", tuple(classes))


def read_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, H, W)`` and labels ``(N,)`` of a Fashion-MNIST split (``train`` / ``val``)
    from the IDX files in ``root`` (default: the Debian package's folder): the one reader of them."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    if not (root / img_name).is_file() or not (root / lbl_name).is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST files {img_name}, {lbl_name} not found in {root}; install them with "
            f"'apt-get install dataset-fashion-mnist' or give root: the folder holding the IDX .gz files")
    images, labels = read_idx(root / img_name), read_idx(root / lbl_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root / img_name} and {root / lbl_name} do not form an (N, H, W) image / (N,) label pair")
    return images, labels


def fashion_mnist(split: str, root: str | Path | None = None, image_size: int | None = None) -> TensorImageDataset:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (or IDX files in ``root``).

    ``train``: 60,000 images; ``val`` (= the official test set): 10,000. 28x28 grey, 10 classes.
    """
    images, labels = read_fashion_mnist(check_split(split), root)
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    x = _normalise(_resize(x, image_size), FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    return TensorImageDataset(x, torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES,
                              builtin_data_config("fashion_mnist", x.shape[-1], FASHION_MNIST_CLASSES))


def digits(split: str, root: str | Path | None = None, image_size: int | None = None,
           val_fraction: float = 0.2) -> TensorImageDataset:
    """scikit-learn's 1,797 8x8 digits (shipped inside sklearn), split 80/20 by a fixed permutation."""
    split = check_split(split)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = int(round(len(y) * val_fraction))
    idx = order[n_val:] if split == "train" else order[:n_val]
    mean, std = DATASET_STATS["digits"]
    x = _normalise(_resize(x[idx], image_size), mean, std)
    names = [str(c) for c in range(10)]
    return TensorImageDataset(x, y[idx], names, builtin_data_config("digits", x.shape[-1], names))


__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "FASHION_MNIST_FILES", "SPLITS", "TensorImageDataset",
    "builtin_data_config", "check_split", "digits", "fashion_mnist", "read_fashion_mnist", "read_idx"
]
