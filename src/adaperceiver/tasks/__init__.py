"""Task registry: what the training engine needs to know about a task, in one :class:`TaskSpec`.

A task says how to build its datasets and its model, which per-read-out loss trains it, how to
augment a batch, how to evaluate, and which sweep metric to use. The engine
(:mod:`adaperceiver.training`) is task-agnostic: it is given a :class:`TaskSpec`. The built-in
tasks (classification, segmentation, depth) are registered below; register your own with::

    from adaperceiver.tasks import TaskSpec, register_task
    register_task(TaskSpec(name="my_task", build_data=..., build_model=..., make_loss=..., evaluate=...))
"""

from __future__ import annotations

from ..training.config import TaskData, TaskSpec
from .classification import CLASSIFICATION, adapt_model_config, evaluate_classification
from .dense import DEPTH, SEGMENTATION

_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Add ``spec`` to the registry (refusing a second task of the same name unless ``overwrite``)."""
    if spec.name in _TASKS and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(_TASKS)}")
    return _TASKS[name]


for _spec in (CLASSIFICATION, SEGMENTATION, DEPTH):
    register_task(_spec)

__all__ = ["TaskData", "TaskSpec", "adapt_model_config", "evaluate_classification", "get_task", "list_tasks",
           "register_task"]
