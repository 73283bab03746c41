"""Your own images: a folder of class sub-folders, read the way a model's data config says.

Two layouts:

* ``root/train/<class>/*`` and ``root/val/<class>/*`` (classes from ``train/``, so both splits share
  label ids);
* ``root/<class>/*`` with ``val_fraction``: a deterministic, per-class split (``split_seed``) recorded
  in :attr:`ImageFolderDataset.meta`. Without ``val_fraction`` such a folder is read whole as the
  ``val`` split (evaluating a checkpoint on your folder) and has no ``train`` split.

Images are prepared by a :class:`~adaperceiver.models.data_config.DataConfig`: the model's when
evaluating, otherwise one derived from the folder (:func:`folder_data_config`: channels and size of
the first image, mean / std measured on a fixed sample of the training images). Files that are not
readable images are found when the dataset is built (header and checksum check): ``on_corrupt="fail"``
refuses the folder naming the first one, ``"skip"`` leaves them out and reports how many and which.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UserError
from ..models.data_config import DataConfig
from .transforms import IMAGE_EXTENSIONS, EvalTransform, convert_mode, open_image, pil_to_tensor, resize_crop

logger = logging.getLogger("adaperceiver")
CORRUPT_CHOICES = ("fail", "skip")
STATS_SAMPLE = 512  # images measured for a folder's mean / std


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` is not a readable image (header / checksum check), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for a broken file
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return why.replace(f" '{path}'", "").replace(f" {path}", "")
    return None


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` positions of ``n`` items: a fixed permutation from ``seed``, the first
    ``round(n * val_fraction)`` (at least one when ``n >= 2``) go to val."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(n - 1, max(1, round(n * val_fraction))) if n >= 2 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


class ImageFolderDataset(Dataset):
    """``(image (C, H, W) float tensor, label)`` from a folder of class sub-folders (module docstring).

    ``data_config`` says how images are prepared (a model's); without one it is derived from the
    training images with ``image_size`` / ``in_chans`` when given. ``transform`` (``PIL image ->
    tensor``) replaces the eval transform, e.g. with training augmentation.
    """

    def __init__(self, root: str | Path, split: str, data_config: DataConfig | None = None, *,
                 image_size: int | None = None, in_chans: int | None = None, val_fraction: float | None = None,
                 split_seed: int = 0, on_corrupt: str = "fail", transform: Callable[[Any], Tensor] | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if on_corrupt not in CORRUPT_CHOICES:
            raise ValueError(f"on_corrupt must be one of {list(CORRUPT_CHOICES)}, got {on_corrupt!r}")
        if val_fraction is not None and not 0 < val_fraction < 1:
            raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if in_chans not in (None, 1, 3):
            raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")
        self.root = root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no image folder {root}")
        self.split = split
        self.samples, self.classes, self.meta = self._find(root, split, val_fraction, split_seed)
        self.meta["skipped"] = self._check_files(on_corrupt)
        if data_config is None:
            data_config = folder_data_config(self, image_size, in_chans)
        elif data_config.class_names is None:  # e.g. a pretrained model's preparation for a new set of classes
            data_config = dataclasses.replace(data_config, class_names=self.classes)
        self.data_config = data_config
        self.transform = transform or EvalTransform(data_config)

    # ----------------------------------------------------------------------------------------------
    def _find(self, root: Path, split: str, val_fraction: float | None, seed: int):
        split_dir = root / split
        if (root / "train").is_dir():
            if val_fraction is not None:
                raise UserError(f"{root} already has train/ and val/ folders; val_fraction is for a single folder "
                                f"of class sub-folders")
            if not split_dir.is_dir():
                raise FileNotFoundError(f"no folder {split_dir}; an image folder holds train/<class>/ and val/<class>/, "
                                        f"or <class>/ folders split with val_fraction")
            class_dir, layout = root / "train", "train/val"
        elif split == "val" and (root / "val").is_dir():
            class_dir, layout = split_dir, "val only"
        else:
            classes_here = _class_dirs(root)
            if not classes_here or (split == "train" and val_fraction is None):
                raise FileNotFoundError(f"no folder {root / 'train'}; an image folder holds train/<class>/ and "
                                        f"val/<class>/, or <class>/ folders split with val_fraction")
            split_dir = class_dir = root
            layout = "single folder" if val_fraction is not None else "single folder, read whole"
        classes = tuple(_class_dirs(class_dir))
        if not classes:
            raise ValueError(f"{class_dir} has no class sub-folders")
        if len(classes) < 2:
            raise ValueError(f"{class_dir} has one class folder ({classes[0]}); classification needs at least 2")
        strangers = [c for c in _class_dirs(split_dir) if c not in classes] if split_dir.is_dir() else []
        if strangers:  # their images would be dropped without a word
            raise ValueError(f"{split_dir} has class folders {strangers} that {class_dir} lacks; every class needs "
                             f"training images (classes come from {class_dir})")
        samples: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            folder = split_dir / name
            files = _image_files(folder) if folder.is_dir() else []
            if not files and (split == "train" or split_dir == root):  # a class the model could never learn
                raise ValueError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}); add some or "
                                 f"remove the folder")
            if val_fraction is not None:
                train_idx, val_idx = split_indices(len(files), val_fraction, seed + label)
                files = [files[i] for i in (train_idx if split == "train" else val_idx)]
            samples += [(p, label) for p in files]
        if not samples:
            raise ValueError(f"no images with extensions {list(IMAGE_EXTENSIONS)} under {split_dir}/<class>/")
        meta = {"root": str(root), "layout": layout, "split": split, "num_images": len(samples)}
        if val_fraction is not None:
            meta.update(val_fraction=val_fraction, split_seed=seed)
        return samples, classes, meta

    def _check_files(self, on_corrupt: str) -> list[str]:
        bad = [(p, why) for p, _ in self.samples if (why := _unreadable(p)) is not None]
        if not bad:
            return []
        if on_corrupt == "fail":
            p, why = bad[0]
            raise UserError(f"cannot read image {p}: {why} ({len(bad)} unreadable file(s) in {self.root}; skip them "
                            f"with on_corrupt='skip')")
        gone = {p for p, _ in bad}
        self.samples = [s for s in self.samples if s[0] not in gone]
        if not self.samples:
            raise UserError(f"every image of {self.root} ({self.split}) is unreadable, e.g. {bad[0][0]}: {bad[0][1]}")
        names = [str(p) for p, _ in bad]
        logger.warning(f"{self.root} ({self.split}): skipped {len(bad)} unreadable image(s): "
                       f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
        self.meta["num_images"] = len(self.samples)
        return names

    # ----------------------------------------------------------------------------------------------
    @property
    def in_chans(self) -> int:
        return self.data_config.in_chans

    @property
    def img_size(self) -> int:
        return self.data_config.input_size

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> Tensor:
        if isinstance(self.transform, EvalTransform):
            return self.transform(path)
        return self.transform(open_image(path))

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        return self.load(path), label

    def first_image(self):
        """The first image file of the folder, decoded (what :func:`describe_conversion` reports)."""
        return open_image(self.samples[0][0])


def folder_data_config(ds: ImageFolderDataset, image_size: int | None = None, in_chans: int | None = None) -> DataConfig:
    """A data config for training on a folder: grey when the first image is grey (else RGB), its
    shorter side as the size, resize shorter side + centre crop, mean / std measured on up to
    :data:`STATS_SAMPLE` images of the folder (a fixed sample: the same numbers on every call)."""
    first = ds.first_image()
    if in_chans is None:
        in_chans = 1 if first.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
    size = image_size or min(first.size)
    probe = DataConfig(size, in_chans, (0.0,) * in_chans, (1.0,) * in_chans, "bilinear", 1.0, "center")
    picks = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].tolist()
    total = np.zeros(in_chans)
    total_sq = np.zeros(in_chans)
    for i in picks:
        x = pil_to_tensor(resize_crop(convert_mode(open_image(ds.samples[i][0], size), in_chans), probe)).double()
        total += x.mean((1, 2)).numpy()
        total_sq += (x * x).mean((1, 2)).numpy()
    mean = total / len(picks)
    std = np.sqrt(np.maximum(total_sq / len(picks) - mean * mean, 1e-12))
    return DataConfig(size, in_chans, tuple(np.round(mean, 4)), tuple(np.round(np.maximum(std, 1e-3), 4)), "bilinear",
                      1.0, "center", ds.classes)


def describe_conversion(ds: ImageFolderDataset) -> str | None:
    """One line when the folder's (first) image differs from what the data config feeds the model."""
    im, cfg = ds.first_image(), ds.data_config
    chans = 1 if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
    if chans == cfg.in_chans and im.size == (cfg.input_size, cfg.input_size):
        return None
    how = ("grey" if cfg.in_chans == 1 else "RGB") + (" (converted)" if chans != cfg.in_chans else "")
    crop = (f"resized (shorter side {cfg.resize_size}) and centre-cropped to {cfg.input_size} px"
            if cfg.crop_mode == "center" else f"resized to {cfg.input_size} px")
    return (f"{ds.root}: images like {ds.samples[0][0].name} ({im.mode} {im.size[0]}x{im.size[1]}) are read as {how}, "
            f"{crop}, as the model's data config says")


__all__ = ["CORRUPT_CHOICES", "ImageFolderDataset", "describe_conversion", "folder_data_config", "split_indices"]
