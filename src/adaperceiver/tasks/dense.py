"""The ``segmentation`` and ``depth`` tasks for the shared training engine and sweeps.

Registered by :mod:`adaperceiver.tasks`, so ``adaperceiver train --task segmentation|depth``
runs through :class:`adaperceiver.training.Trainer` and the joint objective (every depth and token
read-out of one backbone pass, per-sample widths) with :class:`~adaperceiver.losses.PixelCrossEntropy`
or :class:`~adaperceiver.losses.SigLoss` as the task loss. Sweeps use the ``segmentation`` /
``depth`` metrics of :mod:`adaperceiver.evaluation.metrics`.

Datasets (``--dataset``; ``--data-dir`` is the root where needed):

* segmentation: ``fashion_mnist`` / ``fashion_mnist_seg`` (derived labels on real pixels, offline;
  56 px canvas with 1-3 items, or ``--image-size``), ``fashion_mnist_seg28`` (28 px, one item),
  ``fashion_mnist_scene`` (64 px, 2-3 items at depths that set their size and occlusion; derived),
  ``ade20k`` (an ADE20K-style folder: 150 classes, 0 ignored), ``segfolder`` (same layout, class
  ids as stored; set ``head.num_classes``).
* depth: ``fashion_mnist_scene`` (the same derived scenes, depth maps), ``visp_castel`` (30 real
  RGB-D frames from Debian ``visp-images-data``; a pipeline check),
  ``nyu`` / ``depthfolder`` (an NYUv2-style folder, 16-bit PNG millimetres or ``.npy`` metres).

Head settings come from ``model_overrides`` keys ``head.<field>`` (``--set head.num_bins=64``); the
remaining overrides go to the backbone config. ``num_classes`` of the backbone is its feature
channels per patch (default: ``embed_dim``). The peer presets ``vit_tiny*`` build the plain-ViT
baseline (:class:`~adaperceiver.models.vit.ViTDense` under the same head), trained at its one setting.

Frozen-backbone mode (as in the paper): ``init_from`` a trained run (classifier, dense backbone or
a dense task model) and ``freeze_backbone``: the encoder (patch embedding, latents, read, blocks)
is copied and frozen; output queries (``query_proj``), write cross-attention, feature layer and
head are trained. Without ``freeze_backbone`` the same start is fully fine-tuned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import WEIGHTS_NAME, load_config, read_state_dict, strip_prefix
from ..data import SubsetDataset
from ..data.dense import DENSE_DATASETS, DepthFolder, SegmentationFolder, depth_range
from ..data.visp import ViSPCastelDepth
from ..errors import UserError
from ..evaluation.metrics import DepthMetric, SegmentationMetric
from ..losses import PixelCrossEntropy, SigLoss, pixel_cross_entropy, sig_loss
from ..models.config import AdaPerceiverConfig
from ..models.heads import DenseTaskModel, build_dense_model, dense_config, head_config
from ..models.presets import is_peer, preset_config
from ..models.util import eval_mode
from ..models.vit import ViTConfig
from ..training.config import AUGMENT_RECIPES, TaskData, TaskSpec, TrainConfig
from .classification import adapt_model_config

SEG_DATASETS = ("fashion_mnist", "fashion_mnist_seg", "fashion_mnist_seg28", "fashion_mnist_scene", "ade20k", "segfolder")
DEPTH_DATASETS = ("fashion_mnist_scene", "visp_castel", "nyu", "depthfolder")
ENCODER_PREFIXES = ("patch_embed.", "latent_token", "latent_pos", "read.", "blocks.")
DECODER_PREFIXES = ("write.", "query_proj.", "head_norm.", "head_fc.")


# ------------------------------------------------------------------------------------------------
# overrides: head.<field> vs backbone fields


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({backbone field: value}, {head field: value})`` from ``model_overrides``."""
    backbone, head = {}, {}
    for k, v in overrides.items():
        if k.startswith("head."):
            head[k[len("head."):]] = v
        else:
            backbone[k] = v
    return backbone, head


def _no_head_overrides(cfg: TrainConfig) -> TrainConfig:
    backbone, _ = split_overrides(cfg.model_overrides)
    return dataclasses.replace(cfg, model_overrides=backbone)


# ------------------------------------------------------------------------------------------------
# data


def _subset(ds, n: int | None, seed: int = 0):
    return ds if not n or n >= len(ds) else SubsetDataset(ds, n, seed)


def _need_root(cfg: TrainConfig) -> Path:
    if not cfg.data_dir:
        raise UserError(f"dataset {cfg.dataset!r} needs data_dir pointing at its root folder")
    return Path(cfg.data_dir)


# the task's names of the composed (derived Fashion-MNIST) sets -> their registry keys
_COMPOSED_SEG = {"fashion_mnist": "fashion_mnist_seg", "fashion_mnist_seg": "fashion_mnist_seg",
                 "fashion_mnist_seg28": "fashion_mnist_seg28", "fashion_mnist_scene": "fashion_mnist_scene_seg",
                 "fashion_mnist_scene_seg": "fashion_mnist_scene_seg"}


def _composed(key: str, cfg: TrainConfig):
    """Train and val of a composed set, built by the dataset registry: the first ``train_subset`` /
    ``val_subset`` (default 2,000) items, not a shuffled subset, so the scenes do not depend on the seed."""
    build = DENSE_DATASETS[key]
    return (build("train", cfg.data_dir, image_size=cfg.image_size, length=cfg.train_subset),
            build("val", cfg.data_dir, image_size=cfg.image_size, length=cfg.val_subset or 2000))


def segmentation_data(cfg: TrainConfig) -> TaskData:
    name = cfg.dataset.lower().replace("-", "_")
    _, head = split_overrides(cfg.model_overrides)
    if name in _COMPOSED_SEG:
        train, val = _composed(_COMPOSED_SEG[name], cfg)
        classes, k, ignore, size = train.classes, train.num_classes, train.ignore_index, train.img_size
    elif name in ("ade20k", "segfolder"):
        root = _need_root(cfg)
        ade = name == "ade20k"
        k = int(head.get("num_classes", 150 if ade else 0))
        if k < 2:
            raise UserError("dataset 'segfolder' needs the class count: head.num_classes=K in model_overrides")
        ignore = int(head.get("ignore_index", 255))
        size = cfg.image_size or 224
        kw = dict(num_classes=k, size=size, reduce_zero_label=ade, ignore_index=ignore)
        train = _subset(SegmentationFolder(root, "train", **kw), cfg.train_subset, cfg.seed)
        val = _subset(SegmentationFolder(root, "val", **kw), cfg.val_subset, cfg.seed)
        classes = tuple(str(i) for i in range(k))
    else:
        raise ValueError(f"unknown segmentation dataset {cfg.dataset!r}; available: {list(SEG_DATASETS)}")
    in_chans = getattr(train, "in_chans", 3)
    meta = {"dense": {"dataset": name, "num_classes": k, "ignore_index": ignore}, **_data_config(train)}
    return TaskData(train, val, k, in_chans, size, tuple(classes), meta)


def _data_config(train) -> dict[str, Any]:
    """How the training images were prepared, recorded with the model when the dataset says (the built-in sets)."""
    dc = getattr(getattr(train, "dataset", train), "data_config", None)
    return {"data_config": dc.to_dict()} if dc is not None else {}


def depth_data(cfg: TrainConfig) -> TaskData:
    name = cfg.dataset.lower().replace("-", "_")
    if name == "visp_castel":
        size = (cfg.image_size * 3 // 4, cfg.image_size) if cfg.image_size else (96, 128)
        train = ViSPCastelDepth(cfg.data_dir, "train", size=size)
        val = ViSPCastelDepth(cfg.data_dir, "val", size=size)
    elif name in ("fashion_mnist_scene", "fashion_mnist_scene_depth"):
        train, val = _composed("fashion_mnist_scene_depth", cfg)
    elif name in ("nyu", "depthfolder"):
        root = _need_root(cfg)
        size = (cfg.image_size or 224,) * 2
        train = _subset(DepthFolder(root, "train", size=size), cfg.train_subset, cfg.seed)
        val = _subset(DepthFolder(root, "val", size=size), cfg.val_subset, cfg.seed)
    else:
        raise ValueError(f"unknown depth dataset {cfg.dataset!r}; available: {list(DEPTH_DATASETS)}")
    lo, hi = depth_range(train)
    x0 = train[0][0]
    meta = {"dense": {"dataset": name, "depth_range": [lo, hi], "image_hw": list(x0.shape[-2:])}, **_data_config(train)}
    return TaskData(train, val, 1, x0.shape[0], max(x0.shape[-2:]), (), meta)


# ------------------------------------------------------------------------------------------------
# models


def _backbone_state(directory: str | Path) -> tuple[AdaPerceiverConfig, dict[str, Tensor]]:
    """Config and backbone-named weights of any saved model (classifier, dense, or dense task model)."""
    src_cfg = load_config(directory)
    state = strip_prefix(read_state_dict(Path(directory) / WEIGHTS_NAME), "backbone.")
    return src_cfg, state


def load_backbone(model: DenseTaskModel, directory: str | Path, decoder: bool = True) -> list[str]:
    """Copy a trained model's encoder (and, with ``decoder``, any shape-matching write/query weights) into ``model``.

    Works from a classifier run (its write cross-attention initialises the dense write), a dense
    backbone or a dense task model. Returns the copied backbone keys; a missing or mis-shaped encoder
    weight is a ``ValueError``.
    """
    _, state = _backbone_state(directory)
    own = model.backbone.state_dict()
    enc = [k for k in own if k.startswith(ENCODER_PREFIXES)]
    missing = [k for k in enc if k not in state]
    wrong = [k for k in enc if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"{directory} does not hold a compatible encoder: missing {missing[:4]}, "
                         f"shape mismatch {wrong[:4]} (the backbone config must match the saved one)")
    keys = enc + [k for k in own if decoder and k.startswith(DECODER_PREFIXES) and k in state
                  and state[k].shape == own[k].shape]
    model.backbone.load_state_dict({**own, **{k: state[k] for k in keys}})
    return keys


def _backbone_config(cfg: TrainConfig, data: TaskData) -> AdaPerceiverConfig | ViTConfig:
    backbone, _ = split_overrides(cfg.model_overrides)
    if is_peer(cfg.model):
        return _peer_config(cfg, data, backbone)
    if cfg.init_from:
        src_cfg, _ = _backbone_state(cfg.init_from)
        if src_cfg.in_chans != data.in_chans:
            raise ValueError(f"{cfg.init_from} was trained on {src_cfg.in_chans}-channel images; the "
                             f"{cfg.dataset} data has {data.in_chans}")
        mcfg = dense_config(src_cfg, backbone.get("num_classes", src_cfg.num_classes if src_cfg.task == "dense" else None))
        return mcfg.static_config(*cfg.static) if cfg.static else mcfg
    probe_values = {"img_size": data.img_size, "in_chans": data.in_chans, **backbone}
    probe_values.pop("num_classes", None)
    probe = preset_config(cfg.model, **probe_values)
    feature_dim = int(backbone.get("num_classes", probe.embed_dim))
    return adapt_model_config(_no_head_overrides(cfg), dataclasses.replace(data, num_classes=feature_dim), task="dense")


def _peer_config(cfg: TrainConfig, data: TaskData, backbone: dict[str, Any]) -> ViTConfig:
    """The plain-ViT baseline's config: the preset at the data's size and channels, ``num_classes`` = feature
    channels per patch (default: its width)."""
    if not cfg.model.startswith("vit_"):
        raise UserError(f"model {cfg.model!r} has no dense form; the dense baselines are the plain ViTs "
                        f"(vit_tiny, vit_tiny_x2, vit_tiny_x4)")
    if cfg.init_from or cfg.static:
        raise UserError(f"model {cfg.model!r} is a static baseline: a dense run of it starts from scratch at its "
                        f"one setting (no init_from, no static configuration)")
    mcfg = preset_config(cfg.model, img_size=data.img_size, in_chans=data.in_chans, **backbone)
    if "num_classes" not in backbone:
        mcfg = dataclasses.replace(mcfg, num_classes=mcfg.embed_dim)
    return mcfg


def _head_values(cfg: TrainConfig, data: TaskData, task: str) -> dict[str, Any]:
    _, head = split_overrides(cfg.model_overrides)
    dense = data.meta.get("dense", {})
    if task == "segmentation":
        head.setdefault("num_classes", int(dense.get("num_classes", data.num_classes)))
        head.setdefault("ignore_index", int(dense.get("ignore_index", 255)))
    elif "depth_range" in dense:  # bins cover the training depths with a margin
        lo, hi = dense["depth_range"]
        head.setdefault("min_depth", round(max(1e-3, 0.5 * lo), 4))
        head.setdefault("max_depth", round(1.25 * hi, 4))
    return head


def segmentation_model(cfg: TrainConfig, data: TaskData) -> nn.Module:
    return _dense_model(cfg, data, "segmentation")


def depth_model(cfg: TrainConfig, data: TaskData) -> nn.Module:
    return _dense_model(cfg, data, "depth")


def _dense_model(cfg: TrainConfig, data: TaskData, task: str) -> DenseTaskModel:
    model = build_dense_model(task, _backbone_config(cfg, data), head_config(task, _head_values(cfg, data, task)))
    if cfg.init_from:
        load_backbone(model, cfg.init_from)
    return model


# ------------------------------------------------------------------------------------------------
# losses, augmentation, evaluation


def segmentation_loss(cfg: TrainConfig) -> PixelCrossEntropy:
    _, head = split_overrides(cfg.model_overrides)
    return PixelCrossEntropy(int(head.get("ignore_index", 255)))


def depth_loss(cfg: TrainConfig) -> SigLoss:
    _, head = split_overrides(cfg.model_overrides)
    return SigLoss(max_depth=head.get("max_depth"))


def _flip_augment(cfg: TrainConfig, data=None):
    """Joint horizontal flip of images and targets (labels / depth), drawn from the step generator."""
    if cfg.augmentation() != AUGMENT_RECIPES["basic"]:
        raise UserError(f"the training augmentation recipe {cfg.recipe!r} and its options (RandomResizedCrop, "
                        f"RandAugment, erasing, MixUp / CutMix) are for classification; dense tasks flip only")
    if not cfg.hflip:
        return None

    def augment(images: Tensor, targets: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        b = images.shape[0]
        flip = (torch.rand(b, generator=gen) < 0.5).to(images.device)
        images = torch.where(flip.view(b, 1, 1, 1), images.flip(-1), images)
        shape = (b,) + (1,) * (targets.dim() - 1)
        targets = torch.where(flip.view(shape), targets.flip(-1), targets)
        return images, targets

    return augment


@torch.no_grad()
def evaluate_dense(model: nn.Module, loader: Iterable, device: torch.device, tokens: int | None = None,
                   depth: int | None = None, width: int | None = None) -> dict[str, float]:
    """Metrics and mean loss of one configuration (default: the full one) over ``loader``."""
    head = model.head_cfg
    seg = model.task == "segmentation"
    metric = SegmentationMetric(head.num_classes, head.ignore_index) if seg else DepthMetric(max_depth=head.max_depth)
    loss, batches = 0.0, 0
    with eval_mode(model):
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            pred = model(images, tokens=tokens, depth=depth, width=width)
            loss += float(pixel_cross_entropy(pred, targets, head.ignore_index) if seg else sig_loss(pred, targets))
            metric.update(pred, targets)
            batches += 1
    if not batches:
        raise ValueError("the evaluation loader yielded no batches")
    return {**metric.compute(), "loss": loss / batches}


SEGMENTATION = TaskSpec(
    name="segmentation",
    build_data=segmentation_data,
    build_model=segmentation_model,
    make_loss=segmentation_loss,
    evaluate=evaluate_dense,
    make_augment=_flip_augment,
    primary_metric="miou",
    higher_is_better=True,
    sweep_metric="segmentation",
    description="semantic segmentation (derived Fashion-MNIST composites, ADE20K-style folders); pixel CE, mIoU",
)

DEPTH = TaskSpec(
    name="depth",
    build_data=depth_data,
    build_model=depth_model,
    make_loss=depth_loss,
    evaluate=evaluate_dense,
    make_augment=_flip_augment,
    primary_metric="rmse",
    higher_is_better=False,
    sweep_metric="depth",
    description="monocular depth (ViSP castel frames, NYUv2-style folders); SigLoss, RMSE / AbsRel / delta",
)


__all__ = ["DEPTH", "DEPTH_DATASETS", "SEGMENTATION", "SEG_DATASETS", "depth_data", "evaluate_dense", "load_backbone", "segmentation_data",
           "split_overrides"]
