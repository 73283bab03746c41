"""Dense-prediction heads and task models on the adaptive dense backbone.

``AdaPerceiverDense`` writes one feature per patch, a ``(B, C, h, w)`` map at any configuration.
A head turns that map into a prediction at image resolution:

* :class:`SegmentationHead`: LayerNorm over channels, dropout, 1x1 conv to class logits, bilinear
  upsample to the image (the paper's segmentation head, docs/dense.md).
* :class:`DepthHead`: upsample the grid 4x, 3x3 conv to ``K`` bins, ``relu + 0.1``, normalise over
  bins, depth = sum_k p_k * linspace(min_depth, max_depth, K)_k, resize to the image; clamp in eval.

:class:`SegmentationModel` / :class:`DepthModel` wrap a dense backbone and a head behind the same
interface as the classifier (``cfg``, ``num_blocks``, ``forward(x, tokens, depth, width)``,
``forward_anytime``, ``backbone_parameters``), so the training engine, sweeps and
``checkpoint.save_pretrained`` / ``from_pretrained`` work on them unchanged. The same heads sit on a
plain ViT (:class:`~adaperceiver.models.vit.ViTDense`, one setting): the segmenter / depth baseline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import from_known_fields
from . import executor
from .adaperceiver import AdaPerceiverConfig, AdaPerceiverDense, AnytimeOutput, WidthArg
from .layers import LN_EPS
from .setting import Setting, SettingSpace
from .vit import ViTConfig, ViTDense

DenseBackbone = AdaPerceiverDense | ViTDense

# ------------------------------------------------------------------------------------------------
# head configs


@dataclass
class SegmentationHeadConfig:
    """Segmentation head settings (stored in config.json under ``"head"``)."""

    num_classes: int = 2  # real classes; the ignore label is not one of them
    dropout: float = 0.1
    ignore_index: int = 255  # label value excluded from loss and metrics

    def __post_init__(self) -> None:
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.ignore_index, int) or 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index must be an int outside the class range [0, {self.num_classes - 1}] "
                             f"(e.g. 255 or -100), got {self.ignore_index!r}")


@dataclass
class DepthHeadConfig:
    """Depth head settings (stored in config.json under ``"head"``)."""

    num_bins: int = 256
    min_depth: float = 1e-3
    max_depth: float = 10.0
    upsample: int = 4  # patch grid upsampling before the 3x3 conv

    def __post_init__(self) -> None:
        if isinstance(self.num_bins, bool) or not isinstance(self.num_bins, int) or self.num_bins < 2:
            raise ValueError(f"num_bins must be an int >= 2, got {self.num_bins!r}")
        if not 0.0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got min_depth={self.min_depth}, max_depth={self.max_depth}")
        if isinstance(self.upsample, bool) or not isinstance(self.upsample, int) or self.upsample < 1:
            raise ValueError(f"upsample must be an int >= 1, got {self.upsample!r}")


# ------------------------------------------------------------------------------------------------
# heads


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _check_map(feats: Tensor, channels: int) -> None:
    if feats.dim() != 4 or feats.shape[1] != channels:
        raise ValueError(f"head expects a (B, {channels}, h, w) feature map, got shape {tuple(feats.shape)}")


class SegmentationHead(nn.Module):
    """LayerNorm2d + Dropout + 1x1 conv on the patch grid, bilinear upsample to ``size``."""

    def __init__(self, in_channels: int, cfg: SegmentationHeadConfig):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.norm = LayerNorm2d(in_channels, eps=LN_EPS)
        self.drop = nn.Dropout(cfg.dropout)
        self.conv = nn.Conv2d(in_channels, cfg.num_classes, kernel_size=1)
        nn.init.trunc_normal_(self.conv.weight, std=0.02)
        nn.init.zeros_(self.conv.bias)

    def forward(self, feats: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Class logits ``(B, num_classes, *size)`` (``size`` defaults to the feature grid)."""
        _check_map(feats, self.in_channels)
        logits = self.conv(self.drop(self.norm(feats)))
        if size is not None and tuple(size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits


class DepthHead(nn.Module):
    """Classification-into-bins depth head: ``depth = sum_k softmax-free p_k * bin_k``.

    ``p = (relu(conv(x)) + 0.1) / sum(...)`` over ``K`` bins evenly spaced in
    ``[min_depth, max_depth]``; the output is ``(B, 1, *size)`` metres (or whatever unit the
    targets use), clamped to ``[min_depth, max_depth]`` in eval mode.
    """

    def __init__(self, in_channels: int, cfg: DepthHeadConfig):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, cfg.num_bins, kernel_size=3, padding=1)
        self.register_buffer("bins", torch.linspace(cfg.min_depth, cfg.max_depth, cfg.num_bins), persistent=False)
        nn.init.trunc_normal_(self.conv.weight, std=0.02)
        nn.init.zeros_(self.conv.bias)

    def forward(self, feats: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        _check_map(feats, self.in_channels)
        if self.cfg.upsample > 1:
            feats = F.interpolate(feats, scale_factor=self.cfg.upsample, mode="bilinear", align_corners=False)
        p = F.relu(self.conv(feats)) + 0.1
        p = p / p.sum(1, keepdim=True)
        depth = torch.einsum("bkhw,k->bhw", p, self.bins.to(p.dtype)).unsqueeze(1)
        if size is not None and tuple(size) != tuple(depth.shape[-2:]):
            depth = F.interpolate(depth, size=tuple(size), mode="bilinear", align_corners=False)
        if not self.training:
            depth = depth.clamp(self.cfg.min_depth, self.cfg.max_depth)
        return depth


# ------------------------------------------------------------------------------------------------
# task models


def _check_backbone(backbone: nn.Module) -> int:
    if not isinstance(backbone, (AdaPerceiverDense, ViTDense)):
        raise ValueError(f"a dense task model needs an AdaPerceiverDense or ViTDense backbone, got {type(backbone).__name__}")
    return backbone.feature_dim


class DenseTaskModel(nn.Module):
    """A dense backbone (:class:`AdaPerceiverDense`, or :class:`ViTDense` for the baseline) plus a head,
    with the classifier's interface.

    ``forward(x, tokens, depth, width)`` is the head on one configuration's feature map;
    ``forward_anytime`` applies the head to every read-out of one backbone pass.
    """

    task: str = ""

    def __init__(self, backbone: DenseBackbone, head: nn.Module):
        super().__init__()
        _check_backbone(backbone)
        self.backbone = backbone
        self.head = head

    # the classifier's interface, delegated to the backbone
    @property
    def cfg(self) -> AdaPerceiverConfig | ViTConfig:
        return self.backbone.cfg

    @property
    def head_cfg(self) -> Any:
        return self.head.cfg

    @property
    def num_blocks(self) -> int:
        return self.backbone.num_blocks

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.blocks

    def resolve_width(self, width: WidthArg, batch_size: int) -> tuple[int | None, Tensor | None]:
        return self.backbone.resolve_width(width, batch_size)

    @property
    def space(self) -> SettingSpace:
        return self.backbone.space

    def configurations(self) -> list[Setting]:
        return self.backbone.configurations()

    def resolve_tokens(self, tokens: int | None) -> int:
        return self.backbone.resolve_tokens(tokens)

    def resolve_depth(self, depth: int | None) -> int:
        return self.backbone.resolve_depth(depth)

    def resolve_configuration(self, tokens: int | None, depth: int | None, width: int | None) -> tuple[int, int, int | None]:
        return self.backbone.resolve_configuration(tokens, depth, width)

    def active_parameters(self, tokens: int | None, depth: int | None, width: int | None) -> int:
        """Parameters used at this setting: the backbone's active share and the whole head."""
        return executor.active_parameters(self, (tokens, depth, width))

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Encoder parameters (embedding, latents, read, blocks): what frozen-backbone mode freezes."""
        return self.backbone.backbone_parameters()

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def decoder_parameters(self) -> list[nn.Parameter]:
        """What frozen-backbone mode trains: output queries, write cross-attention, feature layer, head."""
        frozen = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def forward(self, x: Tensor, tokens: int | None = None, depth: int | None = None, width: WidthArg = None) -> Tensor:
        return self.head(self.backbone(x, tokens, depth, width), x.shape[-2:])

    def forward_anytime(self, x: Tensor, tokens: int | None = None, width: WidthArg = None,
                        depths: Sequence[int] | None = None, token_counts: Sequence[int] | None = None) -> AnytimeOutput:
        """Predictions ``(len(depths), len(tokens), B, ...)`` for every read-out of one backbone pass."""
        out = self.backbone.forward_anytime(x, tokens, width, depths, token_counts)
        maps = out.outputs  # (nd, nt, B, C, h, w)
        lead = maps.shape[:3]
        pred = self.head(maps.flatten(0, 2), x.shape[-2:])
        return dataclasses.replace(out, outputs=pred.reshape(*lead, *pred.shape[1:]))

    def checkpoint_meta(self) -> dict[str, Any]:
        """Extra config.json entries that let ``from_pretrained`` rebuild this task model."""
        prefix = "vit_" if isinstance(self.backbone, ViTDense) else ""
        return {"architecture": prefix + self.task, "head": dataclasses.asdict(self.head.cfg)}


class SegmentationModel(DenseTaskModel):
    """Dense backbone + :class:`SegmentationHead`: ``(B, num_classes, H, W)`` logits."""

    task = "segmentation"

    def __init__(self, backbone: DenseBackbone, head_cfg: SegmentationHeadConfig):
        super().__init__(backbone, SegmentationHead(_check_backbone(backbone), head_cfg))

    @property
    def num_classes(self) -> int:
        return self.head.cfg.num_classes

    @property
    def ignore_index(self) -> int:
        return self.head.cfg.ignore_index


class DepthModel(DenseTaskModel):
    """Dense backbone + :class:`DepthHead`: ``(B, 1, H, W)`` depth."""

    task = "depth"

    def __init__(self, backbone: DenseBackbone, head_cfg: DepthHeadConfig):
        super().__init__(backbone, DepthHead(_check_backbone(backbone), head_cfg))


TASK_MODELS: dict[str, tuple[type[DenseTaskModel], type]] = {
    "segmentation": (SegmentationModel, SegmentationHeadConfig),
    "depth": (DepthModel, DepthHeadConfig),
}


def head_config(task: str, values: dict[str, Any] | None = None) -> Any:
    """The head config dataclass of ``task`` built from ``values`` (unknown keys are refused)."""
    if task not in TASK_MODELS:
        raise ValueError(f"unknown dense task {task!r}; allowed: {sorted(TASK_MODELS)}")
    cls = TASK_MODELS[task][1]
    return from_known_fields(cls, dict(values or {}), f"{task} head")


def dense_config(cfg: AdaPerceiverConfig, feature_dim: int | None = None) -> AdaPerceiverConfig:
    """``cfg`` turned into a dense backbone config with ``feature_dim`` channels per patch (default: D); the
    classification read-out (``readout``) becomes the dense one (one query per patch)."""
    return dataclasses.replace(cfg, task="dense", readout="query", num_classes=int(feature_dim or cfg.embed_dim))


def build_dense_model(task: str, backbone_cfg: AdaPerceiverConfig | ViTConfig,
                      head: dict[str, Any] | Any | None = None) -> DenseTaskModel:
    """A fresh task model: ``build_dense_model("segmentation", cfg, {"num_classes": 11})``.

    A classification ``backbone_cfg`` is converted with :func:`dense_config` (features = D); a
    :class:`ViTConfig` builds the plain-ViT baseline (:class:`ViTDense`, ``num_classes`` = feature channels).
    """
    if task not in TASK_MODELS:
        raise ValueError(f"unknown dense task {task!r}; allowed: {sorted(TASK_MODELS)}")
    model_cls, cfg_cls = TASK_MODELS[task]
    hcfg = head if isinstance(head, cfg_cls) else head_config(task, head)
    if isinstance(backbone_cfg, ViTConfig):
        return model_cls(ViTDense(backbone_cfg), hcfg)
    if backbone_cfg.task != "dense":
        backbone_cfg = dense_config(backbone_cfg)
    return model_cls(AdaPerceiverDense(backbone_cfg), hcfg)


def build_architecture(name: str, cfg: AdaPerceiverConfig | None, meta: dict[str, Any]) -> DenseTaskModel:
    """Rebuild a task model from its saved config (the ``checkpoint.from_pretrained`` hook); ``vit_<task>``
    names the plain-ViT baseline, whose ``model`` section is a :class:`ViTConfig`."""
    if name.startswith("vit_"):
        return build_dense_model(name[len("vit_"):], ViTConfig(**meta["model"]), meta.get("head"))
    return build_dense_model(name, cfg, meta.get("head"))


__all__ = [
    "DenseTaskModel", "DepthHead", "DepthHeadConfig", "DepthModel", "LayerNorm2d", "SegmentationHead",
    "SegmentationHeadConfig", "SegmentationModel", "TASK_MODELS", "build_architecture", "build_dense_model", "dense_config",
    "head_config",
]
