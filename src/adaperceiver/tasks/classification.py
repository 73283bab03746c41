"""Image classification: Fashion-MNIST, ImageFolder trees, digits; CE on every read-out, top-1 accuracy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_data_config, load_matching
from ..data import RandomCropFlip, canonical_name, get_dataset
from ..data.augment import TrainAugment
from ..errors import UserError
from ..evaluation.metrics import ClassificationAccuracy
from ..losses import cross_entropy
from ..models.data_config import DataConfig
from ..models.presets import build_preset, is_peer, preset_config
from ..models.util import eval_mode
from ..training.config import TaskData, TaskSpec, TrainConfig


def _classification_data(cfg: TrainConfig) -> TaskData:
    # image folders load grey or RGB to match the model (--set in_chans=1); other sets have fixed channels
    kw = dict(root=cfg.data_dir, image_size=cfg.image_size, in_chans=cfg.model_overrides.get("in_chans"))
    folder = canonical_name(cfg.dataset) == "imagefolder"
    if folder:  # validation images are prepared with the data config derived from the training images
        kw.update(val_fraction=cfg.val_fraction, on_corrupt=cfg.corrupt_images)
        if cfg.init_from:  # fine-tuning: images prepared as the pretrained model's were, for the folder's classes
            base = load_data_config(cfg.init_from)
            kw["data_config"] = dataclasses.replace(base, class_names=None, input_size=cfg.image_size or base.input_size)
    elif cfg.val_fraction is not None:
        raise UserError(f"val_fraction is for image folders; dataset {cfg.dataset!r} has its own validation split")
    train = get_dataset(cfg.dataset, "train", subset=cfg.train_subset, **kw)
    if folder:
        kw["data_config"] = train.data_config
    val = get_dataset(cfg.dataset, "val", subset=cfg.val_subset, **kw)
    meta = {"data_config": train.data_config.to_dict()}
    if folder:
        meta["image_folder"] = {"train": train.meta, "val": val.meta}
    return TaskData(train, val, len(train.classes), train.in_chans, train.img_size, tuple(train.classes), meta)


def adapt_model_config(cfg: TrainConfig, data: TaskData, task: str = "classification"):
    """The preset's config with the data's classes / channels / image size and the user's overrides.

    With ``cfg.static = (tokens, depth, width)`` it is the config of that fixed configuration.
    """
    values = dict(num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size)
    peer = is_peer(cfg.model)
    if peer and (cfg.static or task != "classification"):
        raise UserError(f"model {cfg.model!r} is a static baseline: it trains for classification at its own "
                        f"setting{'s' if cfg.model.startswith('flexivit') else ''} (no static configuration, no dense task)")
    mcfg = preset_config(cfg.model, **{**values, **({} if peer else {"task": task}), **cfg.model_overrides})
    if mcfg.img_size % mcfg.patch_size:
        raise UserError(f"image size {mcfg.img_size} is not a multiple of the patch size {mcfg.patch_size}; "
                        f"set image_size or override patch_size")
    if task == "classification" and mcfg.num_classes < data.num_classes:
        raise UserError(f"model override num_classes={mcfg.num_classes} is below the {data.num_classes} classes of "
                        f"dataset {cfg.dataset!r} (labels up to {data.num_classes - 1}); drop it or set >= "
                        f"{data.num_classes}")
    if mcfg.in_chans != data.in_chans:
        raise UserError(f"model override in_chans={mcfg.in_chans} does not match the {data.in_chans}-channel images of "
                        f"dataset {cfg.dataset!r}")
    return mcfg.static_config(*cfg.static) if cfg.static else mcfg


def _classification_model(cfg: TrainConfig, data: TaskData) -> nn.Module:
    model = build_preset(cfg.model, adapt_model_config(cfg, data))
    if cfg.init_from:  # copy every parameter whose name and shape match (e.g. all but a new head)
        names = {id(p): n for n, p in model.named_parameters()}
        frozen = [names[id(p)] for p in model.backbone_parameters()] if cfg.freeze_backbone else []
        load_matching(model, cfg.init_from, required=frozen)
    return model


def _classification_loss(cfg: TrainConfig) -> Callable[[Tensor, Tensor], Tensor]:
    return cross_entropy(cfg.objective.label_smoothing)


@torch.no_grad()
def evaluate_classification(model: nn.Module, loader: Iterable, device: torch.device) -> dict[str, float]:
    """Top-1 (``acc1``) and, with more than five classes, top-5 (``acc5``) accuracy in percent, and the
    mean cross-entropy (``loss``), at the full configuration (the same scale as the sweep's rows)."""
    accuracy, loss = ClassificationAccuracy(), 0.0
    with eval_mode(model):
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            logits = model(images).float()
            loss += float(F.cross_entropy(logits, targets, reduction="sum"))
            accuracy.update(logits, targets)
    if accuracy.count == 0:
        raise ValueError("the evaluation loader yielded no samples")
    out = accuracy.compute()
    out["loss"] = loss / accuracy.count
    return out


def _normalisation(data: TaskData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean / std the training images were normalised with (RandAugment works on [0, 1] pixels)."""
    dc = data.meta.get("data_config") or getattr(data.train, "data_config", None)
    if isinstance(dc, dict):
        dc = DataConfig.from_dict(dc)
    if dc is not None:
        return dc.mean, dc.std
    return (0.5,) * data.in_chans, (0.5,) * data.in_chans  # the image-folder normalisation, for sets without a data config


def _classification_augment(cfg: TrainConfig, data: TaskData):
    """Pad-crop + flip (recipe basic), then RandomResizedCrop / RandAugment / erasing / MixUp-CutMix
    (:class:`~adaperceiver.data.augment.TrainAugment`) when the recipe or an explicit option turns them on."""
    opts = cfg.augmentation()
    crop = None
    if opts["rrc_scale"] is None and (cfg.crop_padding > 0 or cfg.hflip):
        crop = RandomCropFlip(padding=cfg.crop_padding, flip=cfg.hflip)
    extra = opts["rrc_scale"] is not None or (opts["rand_augment"] or (0,))[0] > 0 or opts["random_erasing"] > 0 \
        or (opts["mix_prob"] > 0 and (opts["mixup_alpha"] > 0 or opts["cutmix_alpha"] > 0))
    if not extra:
        return None if crop is None else (lambda images, targets, gen: (crop(images, gen), targets))
    mean, std = _normalisation(data)
    num_classes = cfg.model_overrides.get("num_classes", data.num_classes)  # soft targets as wide as the logits
    full = TrainAugment(num_classes, mean, std, rrc_scale=opts["rrc_scale"],
                        hflip=cfg.hflip and opts["rrc_scale"] is not None, rand_augment=opts["rand_augment"],
                        random_erasing=opts["random_erasing"], mixup_alpha=opts["mixup_alpha"],
                        cutmix_alpha=opts["cutmix_alpha"], mix_prob=opts["mix_prob"])
    if crop is None:
        return full
    return lambda images, targets, gen: full(crop(images, gen), targets, gen)


CLASSIFICATION = TaskSpec(
    name="classification",
    build_data=_classification_data,
    build_model=_classification_model,
    make_loss=_classification_loss,
    evaluate=evaluate_classification,
    make_augment=_classification_augment,
    primary_metric="acc1",
    sweep_metric="classification",
    description="image classification (Fashion-MNIST, ImageFolder, digits); CE on every read-out, top-1 accuracy",
)


__all__ = ["CLASSIFICATION", "adapt_model_config", "evaluate_classification"]
