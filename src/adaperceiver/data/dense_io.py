"""File helpers of the dense datasets: split folders, pairing inputs with targets by stem, opening images,
and resizing images, label maps and depth maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SPLIT_DIRS = {"train": ("training", "train"), "val": ("validation", "val", "test")}




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


__all__ = ["SPLIT_DIRS", "image_to_tensor", "pair_files", "resize_depth", "resize_image", "resize_labels"]
