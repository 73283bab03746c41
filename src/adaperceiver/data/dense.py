"""Dense-prediction datasets: segmentation and depth, from users' folders or data shipped offline.

Every dataset yields ``(image, target)``: ``image`` a normalised float tensor ``(C, H, W)``;
``target`` ``(H, W)`` int64 class labels (``ignore_index`` = unlabelled) for segmentation, or
``(1, H, W)`` float32 depth in metres (0 = no measurement) for depth.

Layouts users have:

* :class:`SegmentationFolder` (ADE20K style): ``root/images/[split/]*.jpg`` and
  ``root/annotations/[split/]*.png`` paired by file stem. ADE20K stores 0 = "other / unlabelled"
  and classes 1..150; with ``reduce_zero_label`` (default) 0 becomes the ignore index and label
  ``c`` becomes ``c - 1``.
* :class:`DepthFolder` (NYUv2 style): ``root/rgb/[split/]*`` (or ``images/``) and
  ``root/depth/[split/]*`` paired by stem; depth as 16-bit PNG in millimetres or ``.npy`` in metres.

Data that exists offline here (nothing is downloaded):

* :class:`FashionMNISTSegmentation`: real Fashion-MNIST pixels composed on a larger canvas with
  per-pixel labels *derived* from them (``label = (pixel > threshold) * (class + 1)``,
  0 = background). It is a real-pixel training task, not a segmentation benchmark.
* :class:`FashionMNISTScene`: items placed at random depths that set their size on the canvas and
  their occlusion order, with derived per-pixel class labels or depth: a segmentation and a depth
  task whose answer is in the pixels (an item's apparent size, what covers what). Derived, too.
* :class:`~adaperceiver.data.visp.ViSPCastelDepth`: the 30 RGB-D frames of Debian ``visp-images-data`` (grey image +
  uint16 depth, reprojected into the image). A pipeline check, not a benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UserError
from .classification import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    builtin_data_config,
    read_fashion_mnist,
)
from .dense_io import _check_split, _open, _size_hw, _split_dir, image_to_tensor, pair_files, resize_depth, resize_image, resize_labels
from .transforms import IMAGE_EXTENSIONS
from .visp import ViSPCastelDepth

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------
# users' folders


class SegmentationFolder(Dataset):
    """ADE20K-style folder: ``images/[split/]*.jpg`` + ``annotations/[split/]*.png`` (label PNGs).

    With ``reduce_zero_label`` (ADE20K's convention) annotation 0 is unlabelled -> ``ignore_index``
    and annotation ``c >= 1`` -> class ``c - 1``; otherwise annotations are class ids as stored and
    ``ignore_index`` in the file stays ignored. A label outside ``[0, num_classes)`` raises a
    ``ValueError`` naming the file. ``size`` resizes images bilinearly and labels by nearest.
    """

    def __init__(self, root: str | Path, split: str | None = None, num_classes: int = 150,
                 size: int | Sequence[int] | None = None, reduce_zero_label: bool = True, ignore_index: int = 255,
                 in_chans: int = 3, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index must lie outside [0, {num_classes - 1}] (e.g. 255), got {ignore_index}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        root = Path(root)
        split = _check_split(split)
        self.pairs = pair_files(_split_dir(root / "images", split), _split_dir(root / "annotations", split),
                                IMAGE_EXTENSIONS, (".png",))
        self.num_classes, self.ignore_index, self.reduce_zero_label = num_classes, ignore_index, reduce_zero_label
        self.size, self.in_chans, self.mean, self.std = _size_hw(size), in_chans, tuple(mean), tuple(std)
        self.classes = tuple(str(i) for i in range(num_classes))
        self.img_size = max(self.size) if self.size else None

    def __len__(self) -> int:
        return len(self.pairs)

    def load_labels(self, path: Path) -> Tensor:
        im = _open(path)
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: annotation must be a single-channel label PNG (mode L, P or I), got mode {im.mode}")
        lab = torch.from_numpy(np.asarray(im).astype(np.int64))
        if self.reduce_zero_label:
            lab = torch.where(lab == 0, torch.full_like(lab, self.ignore_index), lab - 1)
        bad = (lab != self.ignore_index) & ((lab < 0) | (lab >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(f"{path}: labels {sorted(set(lab[bad].unique().tolist()))[:8]} are outside "
                             f"[0, {self.num_classes - 1}] after {'reduce_zero_label' if self.reduce_zero_label else 'reading'}"
                             f"; check num_classes / reduce_zero_label")
        return lab

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img_path, lab_path = self.pairs[i]
        im = _open(img_path).convert("L" if self.in_chans == 1 else "RGB")
        lab = self.load_labels(lab_path)
        if (im.size[1], im.size[0]) != tuple(lab.shape):
            raise ValueError(f"image {img_path} is {im.size[0]}x{im.size[1]} but annotation {lab_path} is "
                             f"{lab.shape[1]}x{lab.shape[0]} (W x H)")
        x = image_to_tensor(np.asarray(im), self.in_chans, self.mean, self.std)
        return resize_image(x, self.size), resize_labels(lab, self.size)


class DepthFolder(Dataset):
    """NYUv2-style folder: ``rgb/`` (or ``images/``) + ``depth/`` paired by stem, optional split sub-folders.

    Depth files: 16-bit PNG in millimetres (``depth_scale`` metres per unit, default 1e-3) or
    ``.npy`` float arrays in metres. 0 (or a non-finite value) marks a missing measurement.
    """

    def __init__(self, root: str | Path, split: str | None = None, size: int | Sequence[int] | None = None,
                 depth_scale: float = 1e-3, in_chans: int = 3, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        if depth_scale <= 0:
            raise ValueError(f"depth_scale must be > 0 (metres per PNG unit), got {depth_scale}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        root = Path(root)
        split = _check_split(split)
        img_dir = root / "rgb" if (root / "rgb").is_dir() else root / "images"
        if not img_dir.is_dir():
            raise FileNotFoundError(f"{root} needs an 'rgb/' (or 'images/') folder next to 'depth/'")
        self.pairs = pair_files(_split_dir(img_dir, split), _split_dir(root / "depth", split), IMAGE_EXTENSIONS, (".png", ".npy"))
        self.size, self.depth_scale, self.in_chans = _size_hw(size), depth_scale, in_chans
        self.mean, self.std = tuple(mean), tuple(std)
        self.classes: tuple[str, ...] = ()
        self.img_size = max(self.size) if self.size else None

    def __len__(self) -> int:
        return len(self.pairs)

    def load_depth(self, path: Path) -> Tensor:
        if path.suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot read {path}: {e}") from None
            if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
                arr = arr.reshape(arr.shape[0] if arr.shape[0] != 1 else arr.shape[1], -1)
            if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
                raise ValueError(f"{path}: depth .npy must be a numeric (H, W) array in metres, got {arr.dtype} {arr.shape}")
            d = arr.astype(np.float32)
        else:
            im = _open(path)
            if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise ValueError(f"{path}: depth PNG must be 16-bit single-channel (millimetres), got mode {im.mode}")
            d = np.asarray(im).astype(np.float32) * self.depth_scale
        d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
        return torch.from_numpy(d)[None]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img_path, dep_path = self.pairs[i]
        im = _open(img_path).convert("L" if self.in_chans == 1 else "RGB")
        d = self.load_depth(dep_path)
        if (im.size[1], im.size[0]) != tuple(d.shape[-2:]):
            raise ValueError(f"image {img_path} is {im.size[0]}x{im.size[1]} but depth {dep_path} is "
                             f"{d.shape[-1]}x{d.shape[-2]} (W x H)")
        x = image_to_tensor(np.asarray(im), self.in_chans, self.mean, self.std)
        return resize_image(x, self.size), resize_depth(d, self.size)


# ------------------------------------------------------------------------------------------------
# derived segmentation from real Fashion-MNIST pixels


class _Composite(Dataset):
    """What the composed Fashion-MNIST sets share: the split's items, how many per image, the ink threshold,
    the length, the preparation (``data_config``, recorded with a trained model) and a blank image per index."""

    num_classes = 11
    classes: tuple[str, ...] = ("background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                "Sneaker", "Bag", "Ankle boot")
    ignore_index = 255

    def _setup(self, split: str, root, canvas: int, min_items: int, max_items: int, threshold: int,
               length: int | None, seed: int) -> None:
        if not 1 <= min_items <= max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got {min_items}, {max_items}")
        if not 0 <= threshold < 255:
            raise ValueError(f"threshold must be in [0, 255), got {threshold}")
        self.items, labels = read_fashion_mnist(split, root)
        self.item_labels = labels.astype(np.int64)
        self.canvas, self.min_items, self.max_items = canvas, min_items, max_items
        self.threshold, self.seed, self.split = threshold, seed, split
        self.length = int(length) if length is not None else len(self.items)
        self.in_chans, self.img_size = 1, canvas
        self.data_config = builtin_data_config("fashion_mnist", canvas, self.classes)

    def __len__(self) -> int:
        return self.length

    def blank(self, i: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
        """The generator of image ``i`` (it depends only on seed, split and ``i``), a black canvas, zero labels."""
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, 1 if self.split == "val" else 0, i])
        return rng, np.zeros((self.canvas,) * 2, np.uint8), np.zeros((self.canvas,) * 2, np.int64)


class FashionMNISTSegmentation(_Composite):
    """Fashion-MNIST items composed on a ``canvas`` x ``canvas`` image with derived per-pixel labels.

    Item ``i`` of the dataset places ``k`` in ``[min_items, max_items]`` random 28x28 Fashion-MNIST
    images of the split at random positions (brightest pixel wins where they overlap); by default
    ``max_items`` is 1 on canvases below 42 px (one item, as in classification) and 3 otherwise. Labels:
    background 0, and ``class + 1`` where the item's pixel exceeds ``threshold`` (0-255), so there
    are 11 classes and nothing is ignored. Labels are derived from pixel intensity, not annotated
    by people. Deterministic: item ``i`` depends only on ``(seed, i)``.
    """

    def __init__(self, split: str = "train", root: str | Path | None = None, canvas: int = 56, min_items: int = 1,
                 max_items: int | None = None, threshold: int = 20, length: int | None = None, seed: int = 0):
        split = _check_split(split) or "train"
        if max_items is None:
            max_items = max(min_items, 1 if canvas < 42 else 3)
        if canvas < 28:
            raise ValueError(f"canvas must be >= 28 (one Fashion-MNIST item), got {canvas}")
        self._setup(split, root, canvas, min_items, max_items, threshold, length, seed)

    def compose(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 canvas ``(S, S)`` and int64 labels ``(S, S)`` of item ``i``."""
        rng, img, lab = self.blank(i)
        s = self.canvas
        for _ in range(int(rng.integers(self.min_items, self.max_items + 1))):
            j = int(rng.integers(len(self.items)))
            item = self.items[j]
            if rng.random() < 0.5:
                item = item[:, ::-1]
            y, x = (int(v) for v in rng.integers(0, s - 28 + 1, size=2))
            region = img[y:y + 28, x:x + 28]
            wins = item > region
            region[wins] = item[wins]
            lab_region = lab[y:y + 28, x:x + 28]
            lab_region[wins & (item > self.threshold)] = self.item_labels[j] + 1
        return img, lab

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img, lab = self.compose(i)
        x = image_to_tensor(img, 1, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        return x, torch.from_numpy(lab)


class FashionMNISTScene(_Composite):
    """Fashion-MNIST items standing at depths in a ``canvas`` x ``canvas`` view, with derived class or depth maps.

    Item ``i`` places ``k`` in ``[min_items, max_items]`` random items of the split, each at a depth ``z``
    drawn uniformly from ``depth_range`` and drawn ``size / z`` pixels wide (``size``: its width at depth 1,
    default three quarters of the canvas), far ones first so that nearer items cover them where their pixel
    exceeds ``threshold``; the background is a wall at ``background_depth``. ``target="segmentation"``
    gives labels (0 background, ``class + 1``); ``target="depth"`` gives ``(1, S, S)`` float depth,
    inferable from an item's apparent size and from occlusion. Derived from real pixels; not a benchmark. Deterministic:
    item ``i`` depends only on ``(seed, i)``, and both targets see the same scene.
    """

    def __init__(self, split: str = "train", root: str | Path | None = None, target: str = "segmentation",
                 canvas: int = 64, min_items: int = 2, max_items: int = 3, depth_range: tuple[float, float] = (1.0, 3.0),
                 size: int | None = None, background_depth: float = 4.0, threshold: int = 20, length: int | None = None,
                 seed: int = 0):
        split = _check_split(split) or "train"
        if target not in ("segmentation", "depth"):
            raise ValueError(f"target must be 'segmentation' or 'depth', got {target!r}")
        lo, hi = (float(v) for v in depth_range)
        size = round(0.75 * canvas) if size is None else size
        if not 0 < lo <= hi < background_depth:
            raise ValueError(f"need 0 < depth_range[0] <= depth_range[1] < background_depth, got {depth_range}, "
                             f"{background_depth}")
        if not 8 <= size <= canvas * lo:
            raise ValueError(f"size (item width at depth 1) must be in [8, canvas * depth_range[0]] = "
                             f"[8, {canvas * lo:g}], got {size}")
        if target == "depth":
            self.classes = ()  # depth maps have no classes
        self._setup(split, root, canvas, min_items, max_items, threshold, length, seed)
        self.target, self.depth_lo, self.depth_hi, self.size = target, lo, hi, size
        self.background_depth = float(background_depth)

    def compose(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 view ``(S, S)``, int64 labels ``(S, S)`` and float32 depth ``(S, S)`` of item ``i``."""
        rng, img, lab = self.blank(i)
        s = self.canvas
        depth = np.full((s, s), self.background_depth, np.float32)
        k = int(rng.integers(self.min_items, self.max_items + 1))
        placed = []
        for _ in range(k):
            j, z, flip = int(rng.integers(len(self.items))), float(rng.uniform(self.depth_lo, self.depth_hi)), rng.random() < 0.5
            w = max(1, round(self.size / z))
            y, x = (int(v) for v in rng.integers(0, s - w + 1, size=2))
            placed.append((z, j, flip, w, y, x))
        for z, j, flip, w, y, x in sorted(placed, reverse=True):  # far first: nearer items cover them
            item = self.items[j][:, ::-1] if flip else self.items[j]
            item = np.asarray(Image.fromarray(np.ascontiguousarray(item)).resize((w, w), Image.BILINEAR))
            ink = item > self.threshold
            img[y:y + w, x:x + w][ink] = item[ink]
            lab[y:y + w, x:x + w][ink] = self.item_labels[j] + 1
            depth[y:y + w, x:x + w][ink] = z
        return img, lab, depth

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img, lab, depth = self.compose(i)
        x = image_to_tensor(img, 1, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        return x, torch.from_numpy(lab) if self.target == "segmentation" else torch.from_numpy(depth)[None]


def depth_range(dataset: Dataset, limit: int = 64) -> tuple[float, float]:
    """Min and max valid depth over the first ``limit`` items (to choose the head's bin range)."""
    lo, hi = math.inf, 0.0
    for i in range(min(limit, len(dataset))):
        d = dataset[i][1]
        v = d[d > 0]
        if v.numel():
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    if hi <= 0:
        raise ValueError("no valid depth in the dataset's first items")
    return lo, hi


def _needs_root(name: str, root) -> Path:
    if root is None:
        raise UserError(f"the {name!r} dataset needs root: the folder holding it")
    return Path(root)


# the composed sets also take ``length``: the first N items (the training task's ``train_subset``)
def _fmnist_seg(split, root=None, image_size=None, in_chans=None, length=None):
    return FashionMNISTSegmentation(split, root, canvas=image_size or 56, length=length)


def _fmnist_seg28(split, root=None, image_size=None, in_chans=None, length=None):
    return FashionMNISTSegmentation(split, root, canvas=image_size or 28, length=length)


def _scene_seg(split, root=None, image_size=None, in_chans=None, length=None):
    return FashionMNISTScene(split, root, "segmentation", canvas=image_size or 64, length=length)


def _scene_depth(split, root=None, image_size=None, in_chans=None, length=None):
    return FashionMNISTScene(split, root, "depth", canvas=image_size or 64, length=length)


def _ade20k(split, root=None, image_size=None, in_chans=None):
    return SegmentationFolder(_needs_root("ade20k", root), split, size=image_size or 224, in_chans=in_chans or 3)


def _nyu(split, root=None, image_size=None, in_chans=None):
    return DepthFolder(_needs_root("nyu", root), split, size=image_size or 224, in_chans=in_chans or 3)


def _visp(split, root=None, image_size=None, in_chans=None):
    size = (image_size * 3 // 4, image_size) if image_size else (96, 128)
    return ViSPCastelDepth(root, split, size=size)


# for ``adaperceiver.data.get_dataset`` (and so ``adaperceiver sweep --data NAME[:ROOT]``)
DENSE_DATASETS = {"fashion_mnist_seg": _fmnist_seg, "fashion_mnist_seg28": _fmnist_seg28, "fashion_mnist_scene_seg": _scene_seg,
                  "fashion_mnist_scene_depth": _scene_depth, "ade20k": _ade20k, "nyu": _nyu, "visp_castel": _visp}

__all__ = [
    "DENSE_DATASETS", "DepthFolder", "FashionMNISTScene",
    "FashionMNISTSegmentation", "SegmentationFolder", "ViSPCastelDepth", "depth_range",
    "pair_files", "resize_depth", "resize_labels",
]
