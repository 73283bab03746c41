"""How a model's input images must be prepared: the one record every image-reading path follows.

A model carries its ``DataConfig`` (as timm's ``pretrained_cfg`` does) and it is saved in
``config.json`` beside the weights, so that evaluation, prediction and fine-tuning read an image
exactly the way the model was trained, never with a default guessed downstream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
CROP_MODES = ("center", "squash")


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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown data config keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)


__all__ = ["CROP_MODES", "DataConfig", "INTERPOLATIONS"]
