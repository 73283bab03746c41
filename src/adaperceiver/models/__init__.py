"""The networks: layers and masks, the AdaPerceiver model (with slim and for_inference), dense heads,
a static ViT, presets.

This package imports nothing else from the library.
"""

from .adaperceiver import (
    AdaPerceiver,
    AdaPerceiverClassifier,
    AdaPerceiverConfig,
    AdaPerceiverDense,
    AnytimeOutput,
    EarlyExitOutput,
    Features,
    build_model,
)
from .inference import InferenceModel, for_inference
from .presets import create_model, list_models, preset_config
from .setting import Setting, SettingSpace
from .slim import slim

__all__ = [
    "AdaPerceiver", "AdaPerceiverClassifier", "AdaPerceiverConfig", "AdaPerceiverDense", "AnytimeOutput",
    "EarlyExitOutput", "Features", "InferenceModel", "Setting", "SettingSpace", "build_model", "create_model",
    "for_inference", "list_models", "preset_config", "slim",
]
