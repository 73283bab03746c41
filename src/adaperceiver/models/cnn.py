"""A small static CNN: the cheap strong teacher for distillation on small grey images.

On 28-64 px images a few VGG-style stages (3x3 convolutions, BatchNorm, ReLU, 2x2 max-pooling
between stages) learn far faster per CPU second than a ViT of the same cost, so they make a
teacher that is clearly stronger than a tiny AdaPerceiver student. Its last feature map
``(B, C, h, w)`` serves as the teacher's per-patch features.

It offers the trainable-model interface of the adaptive models with a single read-out, like
:class:`~adaperceiver.models.vit.StaticViT`, so the one training engine trains it with
``ObjectiveConfig.static()``; :mod:`adaperceiver.training.teachers` wraps it as a teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn

from ..errors import check_fields
from .adaperceiver import AnytimeOutput


@dataclass
class CNNConfig:
    img_size: int = 28
    in_chans: int = 1
    channels: tuple[int, ...] = field(default=(32, 64, 128), metadata=dict(
        group="cnn teacher", help="channels per stage, 2x2 max-pool between stages"))
    convs_per_stage: int = field(default=1, metadata=dict(group="cnn teacher", help="3x3 conv+BN+ReLU layers per stage"))
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_fields(self, {"img_size": ">= 1", "in_chans": ">= 1", "channels": ">= 1", "convs_per_stage": ">= 1",
                            "num_classes": ">= 1"}, "teacher config")
        if not self.channels:
            raise ValueError("teacher config: channels must name at least one stage, got []")
        if self.img_size < 2 ** (len(self.channels) - 1):
            raise ValueError(f"img_size {self.img_size} is too small for {len(self.channels)} stages "
                             f"({len(self.channels) - 1} poolings by 2)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @property
    def feature_grid(self) -> tuple[int, int]:
        """Side of the last feature map (floor-divided once per pooling)."""
        side = self.img_size
        for _ in range(len(self.channels) - 1):
            side //= 2
        return side, side

    # what the training objective reads from a model config (one fixed configuration)
    @property
    def num_latents(self) -> int:
        return self.feature_grid[0] * self.feature_grid[1]

    @property
    def token_grans(self) -> tuple[int, ...]:
        return (self.num_latents,)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.channels[-1],)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_chans: int, out_chans: int):
        super().__init__(nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), nn.BatchNorm2d(out_chans),
                         nn.ReLU(inplace=True))


class StaticCNN(nn.Module):
    """VGG-style CNN classifier: ``forward_features`` gives the last feature map ``(B, C, h, w)``,
    ``forward_head`` global-average-pools it to logits."""

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.cfg = cfg
        stages, c = [], cfg.in_chans
        for i, width in enumerate(cfg.channels):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i else []
            for _ in range(cfg.convs_per_stage):
                layers.append(ConvBNReLU(c, width))
                c = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.head(feats.mean((-2, -1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def num_blocks(self) -> int:
        return len(self.stages)

    def forward_anytime(self, x: Tensor, tokens=None, width=None, depths=None, token_counts=None) -> AnytimeOutput:
        """The one read-out this static model has, in the adaptive models' layout."""
        if width is not None or (depths is not None and tuple(depths) != (self.num_blocks,)):
            raise ValueError("StaticCNN has a single configuration: train it with ObjectiveConfig.static()")
        return AnytimeOutput(self(x)[None, None], (self.num_blocks,), (self.cfg.num_latents,))

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"architecture": "static_cnn"}


def build_architecture(name: str, cfg: None, meta: dict[str, Any]) -> StaticCNN:
    """Rebuild a saved static CNN (``checkpoint.from_pretrained`` calls this)."""
    if name != "static_cnn":
        raise ValueError(f"adaperceiver.models.cnn builds 'static_cnn', not {name!r}")
    return StaticCNN(CNNConfig(**meta["model"]))


__all__ = ["CNNConfig", "ConvBNReLU", "StaticCNN", "build_architecture"]
