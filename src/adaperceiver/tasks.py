"""Task registry: what the training engine needs to know about a task, in one :class:`TaskSpec`.

A task says how to build its datasets and its model, which per-read-out loss trains it, how to
augment a batch, how to evaluate, and which sweep metric to use. The engine
(:mod:`adaperceiver.training`) is task-agnostic. Register a task from your own module::

    from adaperceiver.tasks import TaskSpec, register_task
    register_task(TaskSpec(name="segmentation", build_data=..., build_model=..., make_loss=..., evaluate=...))

and append the module to ``TASK_MODULES`` below so :func:`get_task` imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

if TYPE_CHECKING:  # only for annotations: training imports this module
    from .training import TrainConfig

# modules that call register_task when imported; append yours
TASK_MODULES: list[str] = ["adaperceiver.tasks", "adaperceiver.dense_tasks"]

_TASKS: dict[str, "TaskSpec"] = {}


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


def register_task(spec: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Add ``spec`` to the registry (refusing a second task of the same name unless ``overwrite``)."""
    if spec.name in _TASKS and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def _import_task_modules() -> None:
    for name in TASK_MODULES:
        importlib.import_module(name)


def list_tasks() -> list[str]:
    _import_task_modules()
    return sorted(_TASKS)


def get_task(name: str) -> TaskSpec:
    _import_task_modules()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(_TASKS)}")
    return _TASKS[name]


# --------------------------------------------------------------------------------------------------
# classification
def _classification_data(cfg: "TrainConfig") -> TaskData:
    from .data import get_dataset

    # image folders load grey or RGB to match the model (--set in_chans=1); other sets have fixed channels
    kw = dict(root=cfg.data_dir, image_size=cfg.image_size, in_chans=cfg.model_overrides.get("in_chans"))
    train = get_dataset(cfg.dataset, "train", subset=cfg.train_subset, **kw)
    val = get_dataset(cfg.dataset, "val", subset=cfg.val_subset, **kw)
    return TaskData(train, val, len(train.classes), train.in_chans, train.img_size, tuple(train.classes))


def adapt_model_config(cfg: "TrainConfig", data: TaskData, task: str = "classification"):
    """The preset's config with the data's classes / channels / image size and the user's overrides.

    With ``cfg.static = (tokens, depth, width)`` it is the config of that fixed configuration.
    """
    from .registry import preset_config

    values = dict(num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size, task=task)
    mcfg = preset_config(cfg.model, **{**values, **cfg.model_overrides})
    if mcfg.img_size % mcfg.patch_size:
        raise ValueError(f"image size {mcfg.img_size} is not a multiple of the patch size {mcfg.patch_size}; "
                         f"pass --image-size or --set patch_size=...")
    return mcfg.static_config(*cfg.static) if cfg.static else mcfg


def _classification_model(cfg: "TrainConfig", data: TaskData) -> nn.Module:
    from .model import build_model
    from .training import load_matching

    model = build_model(adapt_model_config(cfg, data))
    if cfg.init_from:  # copy every parameter whose name and shape match (e.g. all but a new head)
        load_matching(model, cfg.init_from)
    return model


def _classification_loss(cfg: "TrainConfig") -> Callable[[Tensor, Tensor], Tensor]:
    from .objective import cross_entropy

    return cross_entropy(cfg.objective.label_smoothing)


@torch.no_grad()
def evaluate_classification(model: nn.Module, loader: Iterable, device: torch.device) -> dict[str, float]:
    """Top-1 (``acc1``) and, with more than five classes, top-5 (``acc5``) accuracy in percent, and the
    mean cross-entropy (``loss``), at the full configuration (the same scale as the sweep's rows)."""
    was_training = model.training
    model.eval()
    correct1, correct5, loss, count, classes = 0, 0, 0.0, 0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        logits = model(images).float()
        classes = logits.shape[-1]
        loss += float(F.cross_entropy(logits, targets, reduction="sum"))
        hits = logits.topk(min(5, classes), dim=-1).indices == targets[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(-1).sum())
        count += targets.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation loader yielded no samples")
    out = {"acc1": 100.0 * correct1 / count}
    if classes > 5:
        out["acc5"] = 100.0 * correct5 / count
    out["loss"] = loss / count
    return out


def _classification_augment(cfg: "TrainConfig"):
    from .data import RandomCropFlip

    if cfg.crop_padding <= 0 and not cfg.hflip:
        return None
    crop = RandomCropFlip(padding=cfg.crop_padding, flip=cfg.hflip)
    return lambda images, targets, gen: (crop(images, gen), targets)


register_task(TaskSpec(
    name="classification",
    build_data=_classification_data,
    build_model=_classification_model,
    make_loss=_classification_loss,
    evaluate=evaluate_classification,
    make_augment=_classification_augment,
    primary_metric="acc1",
    sweep_metric="classification",
    description="image classification (Fashion-MNIST, ImageFolder, digits); CE on every read-out, top-1 accuracy",
))


__all__ = ["TASK_MODULES", "TaskData", "TaskSpec", "adapt_model_config", "evaluate_classification", "get_task",
           "list_tasks", "register_task"]
