"""Training: the run configuration and task interface, the engine, the joint objective, distillation,
distributed helpers and teachers. Imports models, checkpoint, data, losses and evaluation; never tasks
(a :class:`TaskSpec` is passed in)."""

from .config import TaskData, TaskSpec, TrainConfig
from .objective import Batch, JointObjective, ObjectiveConfig
from .rundir import last_checkpoint, load_run_config
from .trainer import NonFiniteLossError, Trainer, TrainResult, train

__all__ = ["Batch", "JointObjective", "NonFiniteLossError", "ObjectiveConfig", "TaskData", "TaskSpec", "TrainConfig",
           "TrainResult", "Trainer", "last_checkpoint", "load_run_config", "train"]
