"""AdaPerceiver: one vision transformer that adapts tokens, depth and width at inference."""

from ._version import __version__
from .checkpoint import from_pretrained, save_pretrained
from .evaluation.predict import Prediction, Predictor, predict
from .models import (
    AdaPerceiver,
    AdaPerceiverClassifier,
    AdaPerceiverConfig,
    AdaPerceiverDense,
    AnytimeOutput,
    EarlyExitOutput,
    Features,
    build_model,
    create_model,
    list_models,
    preset_config,
    slim,
)
from .models.data_config import DataConfig

__all__ = [
    "AdaPerceiver", "AdaPerceiverClassifier", "AdaPerceiverConfig", "AdaPerceiverDense", "AnytimeOutput",
    "DataConfig", "EarlyExitOutput", "Features", "Prediction", "Predictor", "build_model", "create_model",
    "from_pretrained", "list_models", "predict", "preset_config", "save_pretrained", "slim", "__version__",
]
