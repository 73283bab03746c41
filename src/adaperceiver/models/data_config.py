"""How a model's input images must be prepared: the one record every image-reading path follows.

A model carries its ``DataConfig`` (as timm's ``pretrained_cfg`` does) and it is saved in
``config.json`` beside the weights, so that evaluation, prediction and fine-tuning read an image
exactly the way the model was trained, never with a default guessed downstream.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import from_known_fields

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
CROP_MODES = ("center", "squash")

# OpenAI CLIP's normalisation, which the paper's ImageNet models use (the reference code's eval config:
# mean/std below, torchvision Resize(256, antialias=True) with its default bilinear filter, CenterCrop(224))
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# per-dataset normalisation of the built-in sets: (mean, std), one value per channel
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),  # measured on the 60,000 training images
    "digits": ((0.3,), (0.4,)),
}
FOLDER_MEAN, FOLDER_STD = 0.5, 0.5  # what image folders were normalised with before data configs existed

logger = logging.getLogger("adaperceiver")


@dataclass(frozen=True)
class DataConfig:
    """Input size, channels, normalisation, resize and crop of one model, and its class names.

    Eval preprocessing: resize the shorter side to ``round(input_size / crop_pct)`` with
    ``interpolation``, centre-crop ``input_size`` (``crop_mode="center"``), or resize the whole
    image to ``input_size`` x ``input_size`` (``"squash"``); scale to [0, 1]; subtract ``mean``,
    divide by ``std`` (one value per channel).
    """

    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not isinstance(self.input_size, int) or self.input_size < 1:
            raise ValueError(f"data config input_size must be an int >= 1, got {self.input_size!r}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"data config in_chans must be 1 or 3, got {self.in_chans!r}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.in_chans:
                raise ValueError(f"data config {name} needs {self.in_chans} values (one per channel), "
                                 f"got {list(getattr(self, name))}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"data config std must be > 0, got {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"data config interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"data config crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"data config crop_mode must be one of {list(CROP_MODES)}, got {self.crop_mode!r}")
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise ValueError("data config class_names must be distinct")

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop."""
        return int(round(self.input_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["class_names"] = None if self.class_names is None else list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return from_known_fields(cls, d, "data config")


def reference_data_config(img_size: int = 224, class_names: Sequence[str] | None = None) -> DataConfig:
    """The paper's ImageNet eval preprocessing (RGB, CLIP mean/std, bilinear resize of the shorter side to
    256 then centre crop 224), at ``img_size`` with the same crop fraction 224/256."""
    return DataConfig(img_size, 3, CLIP_MEAN, CLIP_STD, "bilinear", 224 / 256, "center",
                      None if class_names is None else tuple(class_names))


def derive_data_config(meta: Mapping[str, Any], in_chans: int, img_size: int) -> tuple[DataConfig, str]:
    """A data config for a checkpoint saved before models carried one, and a line saying what was assumed.

    Read from what config.json does record: the training dataset (built-in sets: their statistics,
    squashed to the model size as they were loaded), ``converted_from`` (the paper's ImageNet eval
    preprocessing), otherwise image-folder style mean/std 0.5 squashed to the model size.
    """
    names = meta.get("class_names")
    names = tuple(names) if isinstance(names, (list, tuple)) and names else None
    train = meta.get("train") if isinstance(meta.get("train"), Mapping) else {}
    dataset = str(train.get("dataset") or (meta.get("dense") or {}).get("dataset") or "").lower().replace("-", "_")
    stats_key = next((k for k in DATASET_STATS if dataset.startswith(k)), None)
    if meta.get("converted_from") and in_chans == 3:
        cfg = reference_data_config(img_size, names)
        why = "a converted reference checkpoint: the paper's ImageNet eval preprocessing"
    elif stats_key is not None and in_chans == len(DATASET_STATS[stats_key][0]):
        mean, std = DATASET_STATS[stats_key]
        cfg = DataConfig(img_size, in_chans, mean, std, "bilinear", 1.0, "squash", names)
        why = f"trained on {dataset}: its mean/std"
    else:
        cfg = DataConfig(img_size, in_chans, (FOLDER_MEAN,) * in_chans, (FOLDER_STD,) * in_chans, "bilinear", 1.0,
                         "squash", names)
        why = f"trained on {dataset or 'an unrecorded dataset'}: the image-folder default"
    return cfg, why


def describe(cfg: DataConfig) -> str:
    """One line: ``3 ch, 224 px (resize 256 -> centre crop 224, bilinear), mean [...], std [...]``."""
    crop = (f"resize {cfg.resize_size} -> centre crop {cfg.input_size}" if cfg.crop_mode == "center"
            else f"squashed to {cfg.input_size}")
    mean, std = [round(m, 4) for m in cfg.mean], [round(s, 4) for s in cfg.std]
    return f"{cfg.in_chans} ch, {cfg.input_size} px ({crop}, {cfg.interpolation}), mean {mean}, std {std}"


__all__ = ["CLIP_MEAN", "CLIP_STD", "CROP_MODES", "DATASET_STATS", "DataConfig", "INTERPOLATIONS", "derive_data_config",
           "describe", "reference_data_config"]
