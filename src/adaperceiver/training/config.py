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
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import UserError, check_fields, check_value
from ..models.adaperceiver import MODEL_CONFIG_RANGES, AdaPerceiverConfig
from .distributed import parse_device
from .objective import ObjectiveConfig

EXPORT_CHOICES = ("ema", "raw")
# allowed ranges of the numeric fields (types come from the annotations)
TRAIN_CONFIG_RANGES = {
    "image_size": ">= 1", "train_subset": ">= 1", "val_subset": ">= 1", "crop_padding": ">= 0", "num_workers": ">= 0",
    "epochs": ">= 1", "batch_size": ">= 1", "eval_batch_size": ">= 1", "lr": "> 0", "min_lr": ">= 0",
    "weight_decay": ">= 0", "warmup_steps": ">= 0", "grad_clip": ">= 0", "accum_steps": ">= 1", "ema_decay": "[0, 1)",
    "seed": ">= 0", "checkpoint_every": ">= 0", "keep_checkpoints": ">= 1", "log_every": ">= 1", "eval_every": ">= 0",
    "max_steps": ">= 1", "static": ">= 1",
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the run's config.json under ``"train"``)."""

    # what to train
    task: str = "classification"
    model: str = "adaperceiver_tiny"  # a registry preset
    model_overrides: dict[str, Any] = field(default_factory=dict)  # any AdaPerceiverConfig field
    static: tuple[int, int, int] | None = None  # (tokens, depth, width): train a static baseline instead
    init_from: str | None = None  # a trained model directory to start from (the task's build_model loads it)
    freeze_backbone: bool = False  # train only output query/queries, write cross-attention and head
    # data
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    image_size: int | None = None  # resize images (default: the dataset's size)
    train_subset: int | None = None  # use a fixed random subset of the training set
    val_subset: int | None = None
    augment: bool = True
    crop_padding: int = 2  # random crop after this much zero padding
    hflip: bool = True
    num_workers: int = 0
    # optimisation
    epochs: int = 5
    batch_size: int = 128
    eval_batch_size: int = 256
    lr: float = 2e-3
    min_lr: float = 2e-5
    weight_decay: float = 0.05
    warmup_steps: int = 200
    grad_clip: float = 3.0  # max global grad norm (0 disables)
    accum_steps: int = 1  # split each (per-process) batch into this many micro-batches, one optimizer step
    ema_decay: float = 0.999  # 0 disables the EMA
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # run
    seed: int = 0
    device: str | None = None  # default: cuda when available, else cpu
    out_dir: str = "runs"
    name: str = "run"
    export: str = "ema"  # weights in model.safetensors: "ema" or "raw" (raw when the EMA is off)
    checkpoint_every: int = 0  # steps between checkpoints; 0: at the end of every epoch
    keep_checkpoints: int = 2
    log_every: int = 20
    eval_every: int = 1  # epochs between evaluations (0: only at the end)
    progress: bool = True
    max_steps: int | None = None  # stop (resumably) after this global step

    def __post_init__(self) -> None:
        try:  # stored in config.json: keep it JSON-shaped (tuples become lists) so saved == loaded
            self.model_overrides = json.loads(json.dumps(dict(self.model_overrides)))
        except (TypeError, ValueError) as e:
            raise UserError(f"model_overrides must be a mapping of JSON-serialisable config values ({e})") from None
        if isinstance(self.objective, dict):
            try:
                self.objective = ObjectiveConfig(**self.objective)
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
        if self.device is not None:
            parse_device(self.device)
        if self.export not in EXPORT_CHOICES:
            raise UserError(f"train config field export must be one of {list(EXPORT_CHOICES)}, got {self.export!r}")
        if self.freeze_backbone and self.init_from is None:
            raise UserError("freeze_backbone needs init_from (a trained model directory): a random frozen "
                            "backbone teaches nothing")

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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown train config keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)


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


@dataclass
class TaskSpec:
    """Everything task-specific the training loop calls.

    * ``build_data(cfg) -> TaskData``
    * ``build_model(cfg, data) -> nn.Module`` (an AdaPerceiver, or a model exposing ``cfg``,
      ``forward_anytime`` and ``backbone_parameters`` like it); honour ``cfg.static`` and
      ``cfg.init_from`` (start from a trained model directory) when set
    * ``make_loss(cfg) -> task_loss(pred, target) -> scalar``, applied to every read-out
    * ``evaluate(model, loader, device) -> dict[str, float]``, containing ``primary_metric``
    * ``make_augment(cfg) -> augment(images, targets, generator) -> (images, targets)`` (or None):
      batched training augmentation, drawing only from ``generator`` so resumed runs match
    * ``sweep_metric``: the metric name given to :func:`adaperceiver.evaluation.run_sweep`
    """

    name: str
    build_data: Callable[["TrainConfig"], TaskData]
    build_model: Callable[["TrainConfig", TaskData], nn.Module]
    make_loss: Callable[["TrainConfig"], Callable[[Tensor, Tensor], Tensor]]
    evaluate: Callable[[nn.Module, Iterable, torch.device], dict[str, float]]
    make_augment: Callable[["TrainConfig"], Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]] | None] | None = None
    primary_metric: str = "acc1"
    higher_is_better: bool = True
    sweep_metric: str = "classification"
    description: str = ""


__all__ = ["EXPORT_CHOICES", "TaskData", "TaskSpec", "TrainConfig"]
