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
* :class:`ViSPCastelDepth`: the 30 RGB-D frames of Debian ``visp-images-data`` (grey image +
  uint16 depth, reprojected into the image). A pipeline check, not a benchmark.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UserError
from .classification import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGE_EXTENSIONS,
    read_fashion_mnist,
)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLIT_DIRS = {"train": ("training", "train"), "val": ("validation", "val", "test")}
VISP_DEPTH_SCALE = 0.000124986647  # metres per uint16 unit in the ViSP castel sequence
VISP_SEARCH = (
    "/usr/share/visp-images-data/ViSP-images/mbt-depth/castel",
    "/tmp/visp/usr/share/visp-images-data/ViSP-images/mbt-depth/castel",
)


# ------------------------------------------------------------------------------------------------
# helpers


def _check_split(split: str | None) -> str | None:
    if split is None:
        return None
    split = "val" if split == "test" else split
    if split not in SPLIT_DIRS:
        raise ValueError(f"split must be one of ['train', 'val'] (or 'test', or None for no split folders), got {split!r}")
    return split


def _split_dir(folder: Path, split: str | None) -> Path:
    """``folder/<split name>`` if such a sub-folder exists (ADE20K: training/validation), else ``folder``."""
    if split is None:
        return folder
    for name in SPLIT_DIRS[split]:
        if (folder / name).is_dir():
            return folder / name
    raise FileNotFoundError(f"{folder} has no split folder for {split!r} (looked for {list(SPLIT_DIRS[split])}); "
                            f"pass split=None if the files sit directly in {folder}")


def _list(folder: Path, exts: Sequence[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts:
            if p.stem in files:
                raise ValueError(f"two files with stem {p.stem!r} in {folder}: {files[p.stem].name}, {p.name}")
            files[p.stem] = p
    return files


def pair_files(inputs: Path, targets: Path, input_exts: Sequence[str], target_exts: Sequence[str]) -> list[tuple[Path, Path]]:
    """Pair ``inputs/*`` and ``targets/*`` by file stem; any unpaired file is an error naming it."""
    for d in (inputs, targets):
        if not d.is_dir():
            raise FileNotFoundError(f"no folder {d}")
    a, b = _list(inputs, input_exts), _list(targets, target_exts)
    if not a:
        raise ValueError(f"no images with extensions {list(input_exts)} in {inputs}")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        msg = []
        if only_a:
            msg.append(f"{len(only_a)} in {inputs} without a target (e.g. {[a[s].name for s in only_a[:3]]})")
        if only_b:
            msg.append(f"{len(only_b)} in {targets} without an image (e.g. {[b[s].name for s in only_b[:3]]})")
        raise ValueError("unpaired files: " + "; ".join(msg))
    return [(a[s], b[s]) for s in sorted(a)]


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
        return im
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _size_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def image_to_tensor(arr: np.ndarray, in_chans: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``(H, W)`` / ``(H, W, C)`` array -> normalised ``(in_chans, H, W)`` float tensor."""
    x = torch.from_numpy(np.array(arr, dtype=np.float32)).div_(255.0)
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
    if x.shape[0] != in_chans:
        x = x.mean(0, keepdim=True) if in_chans == 1 else x[:1].expand(in_chans, -1, -1)
    m = torch.tensor(mean[:in_chans] if len(mean) >= in_chans else mean * in_chans).view(-1, 1, 1)
    s = torch.tensor(std[:in_chans] if len(std) >= in_chans else std * in_chans).view(-1, 1, 1)
    return (x - m) / s


def resize_image(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def resize_labels(y: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Nearest-neighbour resize of an ``(H, W)`` label map (labels must not be blended)."""
    if size is None or tuple(y.shape[-2:]) == size:
        return y
    return F.interpolate(y[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


def resize_depth(d: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Resize a ``(1, H, W)`` depth map without mixing in invalid (0) pixels.

    Shrinking averages the valid depths that fall in each output cell (a cell with none stays 0);
    enlarging is nearest-neighbour.
    """
    if size is None or tuple(d.shape[-2:]) == size:
        return d
    h, w = d.shape[-2:]
    if size[0] <= h and size[1] <= w:
        valid = (d > 0).float()
        s = F.adaptive_avg_pool2d((d * valid)[None], size)[0]
        n = F.adaptive_avg_pool2d(valid[None], size)[0]
        return torch.where(n > 0, s / n.clamp_min(1e-12), torch.zeros_like(s))
    return F.interpolate(d[None], size=size, mode="nearest-exact")[0]


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


class FashionMNISTSegmentation(Dataset):
    """Fashion-MNIST items composed on a ``canvas`` x ``canvas`` image with derived per-pixel labels.

    Item ``i`` of the dataset places ``k`` in ``[min_items, max_items]`` random 28x28 Fashion-MNIST
    images of the split at random positions (brightest pixel wins where they overlap); by default
    ``max_items`` is 1 on canvases below 42 px (one item, as in classification) and 3 otherwise. Labels:
    background 0, and ``class + 1`` where the item's pixel exceeds ``threshold`` (0-255), so there
    are 11 classes and nothing is ignored. Labels are derived from pixel intensity, not annotated
    by people. Deterministic: item ``i`` depends only on ``(seed, i)``.
    """

    num_classes = 11
    classes = ("background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Ankle boot")
    ignore_index = 255

    def __init__(self, split: str = "train", root: str | Path | None = None, canvas: int = 56, min_items: int = 1,
                 max_items: int | None = None, threshold: int = 20, length: int | None = None, seed: int = 0):
        split = _check_split(split) or "train"
        if max_items is None:
            max_items = max(min_items, 1 if canvas < 42 else 3)
        if canvas < 28:
            raise ValueError(f"canvas must be >= 28 (one Fashion-MNIST item), got {canvas}")
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

    def __len__(self) -> int:
        return self.length

    def compose(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 canvas ``(S, S)`` and int64 labels ``(S, S)`` of item ``i``."""
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, 1 if self.split == "val" else 0, i])
        s = self.canvas
        img = np.zeros((s, s), np.uint8)
        lab = np.zeros((s, s), np.int64)
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


# ------------------------------------------------------------------------------------------------
# ViSP castel RGB-D frames (Debian visp-images-data, extracted by the user)


def find_visp_castel(root: str | Path | None = None) -> Path | None:
    """The ``mbt-depth/castel`` folder: ``root``, ``$ADAPERCEIVER_VISP_DIR`` or a known location."""
    cands = [root] if root is not None else [os.environ.get("ADAPERCEIVER_VISP_DIR"), *VISP_SEARCH]
    for c in cands:
        if c and (Path(c) / "castel").is_dir() and (Path(c) / "depth_M_color.txt").is_file():
            return Path(c)
    return None


def _camera(xml: Path) -> tuple[float, float, float, float]:
    text = xml.read_text()
    block = re.search(r"<camera>(.*?)</camera>", text, re.S)
    if block is None:
        raise ValueError(f"{xml} has no <camera> block")
    vals = []
    for tag in ("px", "py", "u0", "v0"):
        m = re.search(rf"<{tag}>\s*([-+0-9.eE]+)\s*</{tag}>", block.group(1))
        if m is None:
            raise ValueError(f"{xml}: <camera> has no <{tag}>")
        vals.append(float(m.group(1)))
    return tuple(vals)  # type: ignore[return-value]


def read_visp_depth(path: str | Path) -> np.ndarray:
    """A ViSP ``depth_image_%04d.bin``: uint32 LE height, width, then uint16 LE pixels."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a ViSP depth header")
    h, w = (int(v) for v in np.frombuffer(raw[:8], "<u4"))
    if len(raw) != 8 + 2 * h * w:
        raise ValueError(f"{path}: header says {h}x{w} uint16 but the file has {len(raw) - 8} data bytes")
    return np.frombuffer(raw[8:], "<u2").reshape(h, w)


def register_depth(depth_m: np.ndarray, depth_cam, color_cam, color_M_depth: np.ndarray,
                   out_hw: tuple[int, int], color_hw: tuple[int, int]) -> np.ndarray:
    """Reproject a depth image into the colour camera at ``out_hw`` resolution (nearest surface wins)."""
    pxd, pyd, u0d, v0d = depth_cam
    pxc, pyc, u0c, v0c = color_cam
    sy, sx = out_hw[0] / color_hw[0], out_hw[1] / color_hw[1]
    v, u = np.nonzero(depth_m > 0)
    z = depth_m[v, u].astype(np.float64)
    pts = np.stack([(u - u0d) / pxd * z, (v - v0d) / pyd * z, z, np.ones_like(z)])
    pc = color_M_depth @ pts
    front = pc[2] > 1e-6
    pc = pc[:, front]
    uc = ((pxc * pc[0] / pc[2] + u0c) + 0.5) * sx - 0.5
    vc = ((pyc * pc[1] / pc[2] + v0c) + 0.5) * sy - 0.5
    ui, vi = np.round(uc).astype(np.int64), np.round(vc).astype(np.int64)
    inside = (ui >= 0) & (ui < out_hw[1]) & (vi >= 0) & (vi < out_hw[0])
    ui, vi, zc = ui[inside], vi[inside], pc[2, inside]
    order = np.argsort(-zc)  # far first, so the nearest surface is written last
    out = np.zeros(out_hw, np.float32)
    out[vi[order], ui[order]] = zc[order]
    return out


class ViSPCastelDepth(Dataset):
    """The 30 grey + depth frames of ViSP's ``mbt-depth/castel`` sequence, depth registered to the image.

    Extract (no install): ``apt-get download visp-images-data`` then
    ``dpkg-deb --fsys-tarfile visp-images-data_*.deb | tar -x --wildcards '*mbt-depth/castel/*'``.
    Depth is reprojected into the grey camera with the shipped intrinsics and extrinsic; ~40 % of
    pixels have no measurement (0). ``split``: frames ``0..23`` train, ``24..29`` val, ``None`` all.
    A pipeline check (one scene, 30 frames), not a benchmark.
    """

    def __init__(self, root: str | Path | None = None, split: str | None = "train", size: Sequence[int] = (96, 128),
                 train_frames: int = 24):
        found = find_visp_castel(root)
        if found is None:
            raise FileNotFoundError(
                f"ViSP castel frames not found (looked in {[str(root)] if root else ['$ADAPERCEIVER_VISP_DIR', *VISP_SEARCH]}); "
                f"extract them with 'apt-get download visp-images-data' and 'dpkg-deb --fsys-tarfile ... | tar -x'")
        split = _check_split(split)
        self.root = found
        frames = sorted(int(m.group(1)) for p in (found / "castel").glob("image_*.pgm")
                        if (m := re.fullmatch(r"image_(\d+)\.pgm", p.name)))
        missing = [f for f in frames if not (found / "castel" / f"depth_image_{f:04d}.bin").is_file()]
        if missing or not frames:
            raise ValueError(f"{found / 'castel'}: frames {missing[:5]} have no depth_image_XXXX.bin (or no frames at all)")
        self.frames = frames if split is None else (frames[:train_frames] if split == "train" else frames[train_frames:])
        self.size = _size_hw(size)
        self.color_cam = _camera(found / "chateau.xml")
        self.depth_cam = _camera(found / "chateau_depth.xml")
        depth_M_color = np.loadtxt(found / "depth_M_color.txt").reshape(4, 4)
        self.color_M_depth = np.linalg.inv(depth_M_color)
        self.in_chans, self.img_size, self.classes = 1, max(self.size), ()

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        f = self.frames[i]
        im = _open(self.root / "castel" / f"image_{f:04d}.pgm").convert("L")
        raw = read_visp_depth(self.root / "castel" / f"depth_image_{f:04d}.bin")
        depth = register_depth(raw.astype(np.float32) * VISP_DEPTH_SCALE, self.depth_cam, self.color_cam,
                               self.color_M_depth, self.size, (im.size[1], im.size[0]))
        x = resize_image(image_to_tensor(np.asarray(im), 1, (0.5,), (0.25,)), self.size)
        return x, torch.from_numpy(depth)[None]


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


def _fmnist_seg(split, root=None, image_size=None, in_chans=None):
    return FashionMNISTSegmentation(split, root, canvas=image_size or 56)


def _fmnist_seg28(split, root=None, image_size=None, in_chans=None):
    return FashionMNISTSegmentation(split, root, canvas=image_size or 28)


def _ade20k(split, root=None, image_size=None, in_chans=None):
    return SegmentationFolder(_needs_root("ade20k", root), split, size=image_size or 224, in_chans=in_chans or 3)


def _nyu(split, root=None, image_size=None, in_chans=None):
    return DepthFolder(_needs_root("nyu", root), split, size=image_size or 224, in_chans=in_chans or 3)


def _visp(split, root=None, image_size=None, in_chans=None):
    size = (image_size * 3 // 4, image_size) if image_size else (96, 128)
    return ViSPCastelDepth(root, split, size=size)


# for ``adaperceiver.data.get_dataset`` (and so ``adaperceiver sweep --data NAME[:ROOT]``)
DENSE_DATASETS = {"fashion_mnist_seg": _fmnist_seg, "fashion_mnist_seg28": _fmnist_seg28, "ade20k": _ade20k, "nyu": _nyu,
                  "visp_castel": _visp}

__all__ = [
    "DENSE_DATASETS", "DepthFolder", "FashionMNISTSegmentation", "SegmentationFolder", "ViSPCastelDepth", "depth_range",
    "find_visp_castel", "pair_files", "read_visp_depth", "register_depth", "resize_depth", "resize_labels",
]
