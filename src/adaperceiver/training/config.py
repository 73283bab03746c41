"""What a training run is: :class:`TrainConfig` (saved in the run's config.json) and the task
interface the engine calls (:class:`TaskSpec`, building :class:`TaskData`).

The engine never looks tasks up by name: the caller passes a :class:`TaskSpec` (the registry of
named tasks is :mod:`adaperceiver.tasks`, which imports this package, not the other way round).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import UserError, check_fields, check_value, from_known_fields
from ..evaluation.precision import PRECISIONS
from ..evaluation.tensorboard import LOGGERS
from ..models.config import MODEL_CONFIG_RANGES, AdaPerceiverConfig
from .distributed import parse_device
from .objective import ObjectiveConfig

EXPORT_CHOICES = ("ema", "raw")
# allowed ranges of the numeric fields (types come from the annotations; NaN/inf are always refused); an AdamW
# learning rate above 1 or a decay above 1 diverges or erases the weights (the command-line help shows each range)
TRAIN_CONFIG_RANGES = {
    "image_size": ">= 1", "val_fraction": "(0, 1)",
    "train_subset": ">= 1", "val_subset": ">= 1", "crop_padding": ">= 0", "num_workers": ">= 0",
    "epochs": ">= 1", "batch_size": ">= 1", "eval_batch_size": ">= 1", "lr": "(0, 1]", "min_lr": "[0, 1]",
    "weight_decay": "[0, 1]", "warmup_steps": ">= 0", "grad_clip": ">= 0", "accum_steps": ">= 1", "ema_decay": "[0, 1)",
    "seed": ">= 0", "checkpoint_every": ">= 0", "keep_checkpoints": ">= 1", "log_every": ">= 1", "eval_every": ">= 0",
    "max_steps": ">= 1", "static": ">= 1",
    "rrc_scale": "(0, 1]", "random_erasing": "[0, 1]", "mixup_alpha": ">= 0", "cutmix_alpha": ">= 0", "mix_prob": "[0, 1]",
}
# the training augmentation recipes; an option given explicitly (not None) overrides its recipe value
AUGMENT_RECIPES: dict[str, dict[str, Any]] = {
    # pad-crop + flip (crop_padding, hflip): the small in-memory sets and the learning benchmarks
    "basic": dict(rrc_scale=None, rand_augment=None, random_erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0),
    # the paper's ImageNet fine-tuning recipe
    "imagenet": dict(rrc_scale=(0.08, 1.0), rand_augment=(2, 20), random_erasing=0.25, mixup_alpha=0.8, cutmix_alpha=0.5,
                     mix_prob=1.0),
    # its distillation stage: milder RandAugment, MixUp alone
    "distill": dict(rrc_scale=(0.08, 1.0), rand_augment=(2, 15), random_erasing=0.25, mixup_alpha=1.0, cutmix_alpha=0.0,
                    mix_prob=1.0),
}
RAND_AUGMENT_LIMITS = ((0, 14), (1, 29))  # (num_ops: 0 = off, magnitude on the 0..30 scale)


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the run's config.json under ``"train"``)."""

    RANGES: ClassVar[dict[str, str]] = TRAIN_CONFIG_RANGES  # shown in the command-line help

    # Each field says what it means (metadata "help") and where it belongs ("group"): the command line
    # is generated from these (adaperceiver.cli.options), so an option is declared once, here.
    # what to train
    task: str = field(default="classification", metadata=dict(
        group="model", help="task: classification, segmentation or depth"))
    model: str = field(default="adaperceiver_tiny", metadata=dict(group="model", help="model preset"))
    model_overrides: dict[str, Any] = field(default_factory=dict, metadata=dict(
        group="model", help="model config fields to override, e.g. embed_dim=96 or token_grans=[8,16,32] "
                            "(segmentation/depth head fields as head.<field>)"))
    static: tuple[int, int, int] | None = field(default=None, metadata=dict(
        group="model", metavar="TOKENS,DEPTH,WIDTH", help="train a static baseline: the same architecture fixed at one configuration "
                            "(tokens, depth, width), e.g. 16,3,48"))
    init_from: str | None = field(default=None, metadata=dict(
        group="model", help="start from a trained model directory (parameters with matching name and shape)"))
    freeze_backbone: bool = field(default=False, metadata=dict(
        group="model", help="with init_from: train only the output query/queries, write cross-attention and head"))
    # data
    dataset: str = field(default="fashion_mnist", metadata=dict(
        group="data", help="fashion_mnist (Debian dataset-fashion-mnist), fashion_mnist_cluttered (its items on "
                           "a 64 px canvas among clutter; ..._cluttered56/60 for smaller canvases), imagefolder (a "
                           "data_dir with train/<class>/ and val/<class>/, or <class>/ with val_fraction), "
                           "digits (sklearn, 8x8), or a dense dataset"))
    data_dir: str | None = field(default=None, metadata=dict(
        group="data", help="dataset root (Fashion-MNIST IDX files or an ImageFolder tree)"))
    image_size: int | None = field(default=None, metadata=dict(
        group="data", help="resize images to this square size (default: the dataset's size; an image folder: the "
                           "shorter side of its first image)"))
    val_fraction: float | None = field(default=None, metadata=dict(
        group="data", help="imagefolder without train/ and val/: hold out this fraction of every class folder for "
                           "validation (a fixed split, recorded in config.json)"))
    corrupt_images: str = field(default="fail", metadata=dict(
        group="data", choices=["fail", "skip"],
        help="imagefolder: refuse a folder holding unreadable image files (fail, naming the first), or leave "
             "them out and report them (skip)"))
    train_subset: int | None = field(default=None, metadata=dict(
        group="data", help="train on a fixed random subset of N images"))
    val_subset: int | None = field(default=None, metadata=dict(
        group="data", help="evaluate on a fixed random subset of N images"))
    augment: bool = field(default=True, metadata=dict(
        group="data", help="batched training augmentation (classification: random crop + horizontal flip)"))
    crop_padding: int = field(default=2, metadata=dict(
        group="data", help="random crop after this much zero padding (0 = no crop)"))
    hflip: bool = field(default=True, metadata=dict(group="data", help="random horizontal flips"))
    recipe: str = field(default="basic", metadata=dict(
        group="data", choices=tuple(AUGMENT_RECIPES),
        help="training augmentation: basic (pad-crop + flip), imagenet (RandomResizedCrop + flip, RandAugment 2,20, "
             "random erasing 0.25, MixUp 0.8 / CutMix 0.5) or distill (RandAugment 2,15, MixUp 1.0); the options "
             "below override single values (on basic they add their op)"))
    rrc_scale: tuple[float, float] | None = field(default=None, metadata=dict(
        group="data", metavar="MIN,MAX", help="RandomResizedCrop area range, a fraction of the image "
                                                      "(imagenet: 0.08,1)"))
    rand_augment: tuple[int, int] | None = field(default=None, metadata=dict(
        group="data", metavar="N,M", help="RandAugment: N ops (0 = off) of magnitude M in [1, 29] on the 0..30 "
                                                  "scale (imagenet: 2,20)"))
    random_erasing: float | None = field(default=None, metadata=dict(
        group="data", help="probability of erasing a random rectangle per image (imagenet: 0.25)"))
    mixup_alpha: float | None = field(default=None, metadata=dict(
        group="data", help="MixUp Beta(alpha, alpha) weight, 0 = off (imagenet: 0.8)"))
    cutmix_alpha: float | None = field(default=None, metadata=dict(
        group="data", help="CutMix Beta(alpha, alpha) area, 0 = off (imagenet: 0.5); with MixUp also on, "
                                   "each mixed batch picks one of the two at random"))
    mix_prob: float | None = field(default=None, metadata=dict(
        group="data", help="probability that a batch is mixed by MixUp / CutMix (default 1)"))
    num_workers: int | None = field(default=None, metadata=dict(
        group="data", help="DataLoader worker processes (default: min(4, CPU cores) for datasets read from files, 0 for "
                           "in-memory tensors); batches do not depend on it"))
    # optimisation
    epochs: int = field(default=5, metadata=dict(group="optimisation", help="training epochs"))
    batch_size: int = field(default=128, metadata=dict(
        group="optimisation", help="images per optimizer step (global, over all processes)"))
    eval_batch_size: int = field(default=256, metadata=dict(group="optimisation", help="images per evaluation batch"))
    lr: float = field(default=2e-3, metadata=dict(group="optimisation", help="peak AdamW learning rate"))
    min_lr: float = field(default=2e-5, metadata=dict(group="optimisation", help="final learning rate of the cosine"))
    weight_decay: float = field(default=0.05, metadata=dict(group="optimisation", help="AdamW weight decay on matrices"))
    warmup_steps: int = field(default=200, metadata=dict(group="optimisation", help="linear warm-up steps"))
    grad_clip: float = field(default=3.0, metadata=dict(group="optimisation", help="max global gradient norm, 0 = off"))
    accum_steps: int = field(default=1, metadata=dict(
        group="optimisation", help="gradient accumulation: micro-batches per optimizer step (batch_size stays the "
                                   "global batch per step)"))
    ema_decay: float = field(default=0.999, metadata=dict(
        group="optimisation", help="EMA decay of the weights, 0 = off"))
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig, metadata=dict(group="objective"))
    # run
    seed: int = field(default=0, metadata=dict(group="run", help="seed of initialisation, data order and augmentation"))
    device: str | None = field(default=None, metadata=dict(
        group="run", help="torch device (default: cuda when available, else cpu)"))
    out_dir: str = field(default="runs", metadata=dict(group="run", help="parent directory of run directories"))
    name: str = field(default="run", metadata=dict(group="run", help="run name: the run directory is out_dir/name"))
    export: str = field(default="ema", metadata=dict(
        group="run", choices=EXPORT_CHOICES, help="weights written to model.safetensors (raw when the EMA is off)"))
    checkpoint_every: int = field(default=0, metadata=dict(
        group="run", help="steps between checkpoints; 0: at the end of every epoch"))
    keep_checkpoints: int = field(default=2, metadata=dict(group="run", help="checkpoints kept on disk"))
    log_every: int = field(default=20, metadata=dict(group="run", help="steps between metrics.csv rows"))
    logger: str = field(default="csv", metadata=dict(
        group="run", choices=LOGGERS, help="where metrics go besides metrics.csv (always written): tensorboard adds "
                                           "event files in RUN_DIR/tensorboard (needs pip install 'adaperceiver[tensorboard]')"))
    eval_every: int = field(default=1, metadata=dict(group="run", help="epochs between evaluations (0: only at the end)"))
    progress: bool = field(default=True, metadata=dict(group="run", help="show a progress bar"))
    precision: str | None = field(default=None, metadata=dict(
        group="run", choices=PRECISIONS, help="fp32, bf16-mixed or fp16-mixed (CUDA only: autocast with a gradient "
                                              "scaler); default bf16-mixed on CUDA, fp32 on CPU; the run's config "
                                              "stores the one used"))
    max_steps: int | None = field(default=None, metadata=dict(
        group="run", help="stop (resumably) after this many optimizer steps in total"))

    def __post_init__(self) -> None:
        try:  # stored in config.json: keep it JSON-shaped (tuples become lists) so saved == loaded
            self.model_overrides = json.loads(json.dumps(dict(self.model_overrides)))
        except (TypeError, ValueError) as e:
            raise UserError(f"model_overrides must be a mapping of JSON-serialisable config values ({e})") from None
        if isinstance(self.objective, dict):
            try:
                self.objective = ObjectiveConfig.from_dict(self.objective)
            except TypeError as e:
                raise UserError(f"train config field objective: {e}") from None
        check_fields(self, TRAIN_CONFIG_RANGES, "train config")  # every field's type and range, up front
        model_fields = {f.name for f in dataclasses.fields(AdaPerceiverConfig)}
        for k, v in self.model_overrides.items():  # other keys belong to task heads; their task checks them
            if k in model_fields:
                check_value(AdaPerceiverConfig, k, v, MODEL_CONFIG_RANGES.get(k), "model config")
        if not self.name or ".." in Path(self.name).parts or Path(self.name).is_absolute():
            raise UserError(f"train config field name must be a relative path inside out_dir without '..', "
                            f"got {self.name!r}")
        if self.min_lr > self.lr:
            raise UserError(f"train config field min_lr ({self.min_lr:g}) must not exceed lr ({self.lr:g}): the cosine "
                            f"decays from lr down to min_lr")
        if self.device is not None:
            parse_device(self.device)
        self._check_augmentation()
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"train config field precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.logger not in LOGGERS:
            raise UserError(f"train config field logger must be one of {list(LOGGERS)}, got {self.logger!r}")
        if self.export not in EXPORT_CHOICES:
            raise UserError(f"train config field export must be one of {list(EXPORT_CHOICES)}, got {self.export!r}")
        if self.freeze_backbone and self.init_from is None:
            raise UserError("freeze_backbone needs init_from (a trained model directory): a random frozen "
                            "backbone teaches nothing")

    def _check_augmentation(self) -> None:
        if self.recipe not in AUGMENT_RECIPES:
            raise UserError(f"train config field recipe must be one of {list(AUGMENT_RECIPES)}, got {self.recipe!r}")
        if self.rrc_scale is not None and self.rrc_scale[0] > self.rrc_scale[1]:
            raise UserError(f"train config field rrc_scale must be MIN,MAX with MIN <= MAX in (0, 1], got {list(self.rrc_scale)}")
        if self.rand_augment is not None:
            (n_lo, n_hi), (m_lo, m_hi) = RAND_AUGMENT_LIMITS
            n, m = self.rand_augment
            if not n_lo <= n <= n_hi or not m_lo <= m <= m_hi:
                raise UserError(f"train config field rand_augment must be N,M with N in [{n_lo}, {n_hi}] (0 = off) and M in "
                                f"[{m_lo}, {m_hi}], got {list(self.rand_augment)}")

    def augmentation(self) -> dict[str, Any]:
        """The recipe's augmentation values with the explicitly given options in place of its own."""
        given = {k: getattr(self, k) for k in AUGMENT_RECIPES[self.recipe]}
        return {k: v if given[k] is None else given[k] for k, v in AUGMENT_RECIPES[self.recipe].items()}

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def exported(self) -> str:
        """Which weights model.safetensors holds: "ema" only when the EMA is on."""
        return "ema" if self.export == "ema" and self.ema_decay > 0 else "raw"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["static"] = list(self.static) if self.static else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return from_known_fields(cls, d, "train config")


# --------------------------------------------------------------------------------------------------
# the task interface
@dataclass
class TaskData:
    """The datasets of a run plus what the model must match."""

    train: Dataset
    val: Dataset | None
    num_classes: int  # classes, or output channels of a dense head
    in_chans: int
    img_size: int
    class_names: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # anything task-specific to store in config.json


Augment = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]


@dataclass
class TaskSpec:
    """Everything task-specific the training loop calls.

    * ``build_data(cfg) -> TaskData``
    * ``build_model(cfg, data) -> nn.Module`` (an AdaPerceiver, or a model exposing ``cfg``,
      ``forward_anytime``, ``backbone_parameters`` and ``no_weight_decay`` like it); honour ``cfg.static`` and
      ``cfg.init_from`` (start from a trained model directory) when set
    * ``make_loss(cfg) -> task_loss(pred, target) -> scalar``, applied to every read-out
    * ``evaluate(model, loader, device) -> dict[str, float]``, containing ``primary_metric``
    * ``make_augment(cfg, data) -> augment(images, targets, generator) -> (images, targets)`` (or None):
      batched training augmentation, drawing only from ``generator`` so resumed runs match; it may
      return soft targets ``(B, classes)`` (MixUp / CutMix) that ``make_loss``'s loss accepts
    * ``sweep_metric``: the metric name given to :func:`adaperceiver.evaluation.run_sweep`
    """

    name: str
    build_data: Callable[["TrainConfig"], TaskData]
    build_model: Callable[["TrainConfig", TaskData], nn.Module]
    make_loss: Callable[["TrainConfig"], Callable[[Tensor, Tensor], Tensor]]
    evaluate: Callable[[nn.Module, Iterable, torch.device], dict[str, float]]
    make_augment: Callable[["TrainConfig", TaskData], Augment | None] | None = None
    primary_metric: str = "acc1"
    higher_is_better: bool = True
    sweep_metric: str = "classification"
    description: str = ""


__all__ = ["EXPORT_CHOICES", "TaskData", "TaskSpec", "TrainConfig"]
