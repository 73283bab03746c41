"""Saving and loading: safetensors weights + a JSON config, written atomically, one writer per run directory.

A pretrained directory holds ``model.safetensors`` and ``config.json``; :func:`from_pretrained`
rebuilds the model from it. ``files`` makes writes crash-safe (atomic replace, the run lock),
``state`` reads and checks weight files, ``pretrained`` rebuilds models. Training state (optimizer,
EMA, step) lives in the training package.
"""

from .files import LOCK_NAME, TEMP_SUFFIX, RunLock, atomic_write, remove_temporaries, run_lock, write_json
from .hub import HUB_PREFIX, hub_snapshot, parse_hub_id
from .pretrained import (
    ARCHITECTURES,
    CONFIG_NAME,
    FOREIGN_CONFIG_ARCHITECTURES,
    WEIGHTS_NAME,
    build_from_meta,
    from_pretrained,
    load_config,
    load_data_config,
    load_matching,
    load_meta,
    model_directory,
    output_path,
    save_pretrained,
)
from .state import DIGEST_KEY, load_strict, read_state_dict, save_state_dict, strip_prefix, strip_wrappers, tensors_digest

__all__ = [
    "ARCHITECTURES", "CONFIG_NAME", "DIGEST_KEY", "FOREIGN_CONFIG_ARCHITECTURES", "HUB_PREFIX", "LOCK_NAME", "TEMP_SUFFIX", "WEIGHTS_NAME",
    "RunLock", "atomic_write", "build_from_meta", "from_pretrained", "hub_snapshot", "load_config", "load_data_config",
    "load_matching", "load_meta", "model_directory", "output_path",
    "load_strict", "parse_hub_id", "read_state_dict", "remove_temporaries", "run_lock", "save_pretrained", "save_state_dict",
    "strip_prefix", "strip_wrappers", "tensors_digest", "write_json",
]
