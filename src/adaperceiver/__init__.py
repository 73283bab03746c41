"""AdaPerceiver: one vision transformer that adapts tokens, depth and width at inference."""

from ._version import __version__
from .checkpoint import from_pretrained, save_pretrained
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

__all__ = [
    "AdaPerceiver", "AdaPerceiverClassifier", "AdaPerceiverConfig", "AdaPerceiverDense", "AnytimeOutput",
    "EarlyExitOutput", "Features", "build_model", "create_model", "from_pretrained", "list_models",
    "preset_config", "save_pretrained", "slim", "__version__",
]
