"""Saving and loading models: safetensors weights + a JSON config, written atomically.

A pretrained directory holds ``model.safetensors`` and ``config.json``; :func:`from_pretrained`
rebuilds the model from it. Every weight loader lives here: :func:`read_state_dict` (safetensors or
torch pickle), :func:`load_strict` (readable refusal of a mismatch), :func:`load_matching` (copy what
fits) and :func:`strip_wrappers` (``module.`` / ``_orig_mod.`` prefixes). Training state (optimizer,
EMA, step) lives in the training package.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .models import cnn, heads, vit
from .models.adaperceiver import AdaPerceiver, AdaPerceiverConfig, build_model

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# wrapper prefixes of saved state dicts: DDP, torch.compile, and checkpoints holding {"model.": ...}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

# Task models that ``build_model(cfg)`` cannot rebuild (a backbone plus a head) add
# ``"architecture": name`` to config.json through a ``checkpoint_meta()`` method; the function named
# here rebuilds them with ``build_architecture(name, cfg, meta)``.
ARCHITECTURES = {
    "segmentation": heads.build_architecture,
    "depth": heads.build_architecture,
    "static_vit": vit.build_architecture,
    "static_cnn": cnn.build_architecture,
}
# architectures whose "model" section is not an AdaPerceiverConfig (they get cfg=None)
FOREIGN_CONFIG_ARCHITECTURES = {"static_vit", "static_cnn"}


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result over ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    def _write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")

    atomic_write(path, _write)


def save_state_dict(path: str | Path, state: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file or a torch pickle (``weights_only``), refusing corrupt files clearly.

    A torch pickle holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign pickle
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop ``module.`` (DDP), ``_orig_mod.`` (torch.compile) and ``model.`` prefixes."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_strict(model: torch.nn.Module, state: Mapping[str, Tensor], source: str = "state dict") -> None:
    """``load_state_dict`` with a readable refusal for missing, unexpected or mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shape:
            parts.append("shape mismatch " + ", ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shape[:8]))
        raise ValueError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)


def load_matching(model: nn.Module, directory: str | Path) -> tuple[list[str], list[str]]:
    """Copy every parameter of ``directory/model.safetensors`` whose name and shape match ``model``.

    Returns ``(loaded, skipped)`` key lists; used to start a run from a trained model.
    """
    state = read_state_dict(Path(directory) / WEIGHTS_NAME)
    own = model.state_dict()
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    skipped = sorted(set(own) - set(loaded))
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded, skipped


def save_pretrained(model: AdaPerceiver, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (plus ``extra`` metadata) into ``directory``."""
    directory = Path(directory)
    save_state_dict(directory / WEIGHTS_NAME, model.state_dict(), metadata={"format": "pt"})
    task_meta = model.checkpoint_meta() if hasattr(model, "checkpoint_meta") else {}
    write_json(directory / CONFIG_NAME, {"model": model.cfg.to_dict(), **task_meta, **(extra or {})})
    return directory


def load_meta(directory: str | Path) -> dict[str, Any]:
    """The whole config.json of a saved model (``"model"`` config plus any extra entries)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; is it a directory written by save_pretrained?")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a valid adaperceiver config ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ValueError(f"{path} is not a valid adaperceiver config (no 'model' section)")
    return meta


def load_config(directory: str | Path) -> AdaPerceiverConfig:
    meta = load_meta(directory)
    try:
        return AdaPerceiverConfig.from_dict(meta["model"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{Path(directory) / CONFIG_NAME} is not a valid adaperceiver config ({e})") from None


def build_from_meta(cfg: AdaPerceiverConfig | None, meta: dict[str, Any]) -> torch.nn.Module:
    """``build_model(cfg)``, or the task model named by ``meta["architecture"]``."""
    arch = meta.get("architecture")
    if arch is None:
        return build_model(cfg)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} in config.json; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](arch, cfg, meta)


def from_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> AdaPerceiver:
    """Rebuild a model saved by :func:`save_pretrained` (or a training run directory) for inference."""
    meta = load_meta(directory)
    cfg = None if meta.get("architecture") in FOREIGN_CONFIG_ARCHITECTURES else load_config(directory)
    model = build_from_meta(cfg, meta)
    load_strict(model, read_state_dict(Path(directory) / WEIGHTS_NAME), source=str(Path(directory) / WEIGHTS_NAME))
    return model.to(map_location).eval()
