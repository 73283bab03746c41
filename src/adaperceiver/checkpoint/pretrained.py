"""Pretrained directories: ``model.safetensors`` + ``config.json``, rebuilt by :func:`from_pretrained`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..models import cnn, flexivit, heads, vit
from ..models.adaperceiver import AdaPerceiver, AdaPerceiverConfig, build_model
from ..models.data_config import DataConfig, derive_data_config, describe, logger
from .files import write_json
from .hub import HUB_PREFIX, hub_snapshot, parse_hub_id
from .state import load_strict, read_state_dict, save_state_dict

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# Task models that ``build_model(cfg)`` cannot rebuild (a backbone plus a head) add
# ``"architecture": name`` to config.json through a ``checkpoint_meta()`` method; the function named
# here rebuilds them with ``build_architecture(name, cfg, meta)``.
ARCHITECTURES = {
    "segmentation": heads.build_architecture,
    "depth": heads.build_architecture,
    "vit_segmentation": heads.build_architecture,
    "vit_depth": heads.build_architecture,
    "static_vit": vit.build_architecture,
    "static_cnn": cnn.build_architecture,
    "flexivit": flexivit.build_architecture,
}


# architectures whose "model" section is not an AdaPerceiverConfig (they get cfg=None)
FOREIGN_CONFIG_ARCHITECTURES = {"static_vit", "static_cnn", "flexivit", "vit_segmentation", "vit_depth"}


def load_matching(model: nn.Module, directory: str | Path, required: Sequence[str] = (),
                  min_fraction: float = 0.5) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``directory/model.safetensors`` whose name and shape match ``model``.

    Returns ``(loaded, skipped)`` key lists; used to start a run from a trained model (all but a new
    head usually match). Refused, with the counts, when fewer than ``min_fraction`` of the model's
    tensors match or any of ``required`` (e.g. a backbone that will stay frozen) does not.
    """
    source = Path(directory) / WEIGHTS_NAME
    state = read_state_dict(source)
    own = model.state_dict()
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    skipped = sorted(set(own) - set(loaded))
    missing = [k for k in required if k not in loaded]
    if missing or len(loaded) < min_fraction * len(own):
        why = (f"{len(missing)} of the {len(required)} tensors that must load do not, e.g. {missing[:3]}" if missing
               else f"fewer than {min_fraction:.0%} fit")
        raise UserError(f"{source} does not fit this model: {len(loaded)} of {len(own)} tensors match by name and "
                        f"shape ({why}; not loaded: {skipped[:4]}{' ...' if len(skipped) > 4 else ''}); was it "
                        f"trained with another model config?")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded, skipped


def save_pretrained(model: AdaPerceiver, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (plus ``extra`` metadata) into ``directory``.

    The model's ``data_config`` (how its input images are prepared), when it has one, is saved as the
    ``"data_config"`` entry (``extra`` may give it instead, as a dict).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"cannot save a model into {directory}: it is a file, not a directory")
    save_state_dict(directory / WEIGHTS_NAME, model.state_dict(), metadata={"format": "pt"})
    task_meta = model.checkpoint_meta() if hasattr(model, "checkpoint_meta") else {}
    data_config = getattr(model, "data_config", None)
    if data_config is not None:
        task_meta["data_config"] = data_config.to_dict()
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
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{Path(directory) / CONFIG_NAME} is not a valid adaperceiver config ({e})") from None


def build_from_meta(cfg: AdaPerceiverConfig | None, meta: dict[str, Any]) -> torch.nn.Module:
    """``build_model(cfg)``, or the task model named by ``meta["architecture"]``."""
    arch = meta.get("architecture")
    if arch is None:
        return build_model(cfg)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} in config.json; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](arch, cfg, meta)


def model_directory(spec: str | Path) -> Path:
    """The local folder of a saved model: ``spec`` itself, or for ``"hf-hub:OWNER/NAME[@REVISION]"`` the hub
    cache's snapshot holding its config and weights (fetched if the cache lacks them)."""
    if str(spec).startswith(HUB_PREFIX):
        return hub_snapshot(str(spec), (CONFIG_NAME, WEIGHTS_NAME))
    return Path(spec)


def output_path(spec: str | Path, name: str) -> Path:
    """Where a command writes what it derives from the model ``spec`` by default: ``spec/name`` for a local
    folder, ``./OWNER--NAME[@REVISION]/name`` for a hub model (never inside the hub cache)."""
    if str(spec).startswith(HUB_PREFIX):
        repo, revision = parse_hub_id(str(spec))
        return Path(repo.replace("/", "--") + (f"@{revision}" if revision else "")) / name
    return Path(spec) / name


def from_pretrained(directory: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> AdaPerceiver:
    """Rebuild a model saved by :func:`save_pretrained` (or a training run directory) for inference.

    ``directory`` may also name a hub repository holding such a model, ``"hf-hub:OWNER/NAME[@REVISION]"``
    (needs ``huggingface_hub``; the user's hub cache, token and offline mode apply).
    ``verify=False`` skips the sha256 check of the weights (for a file edited by hand on purpose).
    """
    directory = model_directory(directory)
    meta = load_meta(directory)
    cfg = None if meta.get("architecture") in FOREIGN_CONFIG_ARCHITECTURES else load_config(directory)
    model = build_from_meta(cfg, meta)
    weights = Path(directory) / WEIGHTS_NAME
    load_strict(model, read_state_dict(weights, verify=verify), source=str(weights))
    model.data_config = read_data_config(meta, model.cfg, directory)
    return model.to(map_location).eval()


def load_data_config(directory: str | Path) -> DataConfig:
    """The data config of a saved model without building the model (e.g. to fine-tune it on a folder)."""
    meta = load_meta(directory)
    m = meta["model"]
    if not isinstance(m.get("in_chans"), int) or not isinstance(m.get("img_size"), int):
        raise UserError(f"{Path(directory) / CONFIG_NAME}: the model section lacks in_chans / img_size")
    cfg = SimpleNamespace(in_chans=m["in_chans"], img_size=m["img_size"], num_classes=m.get("num_classes"))
    return read_data_config(meta, cfg, directory)


def read_data_config(meta: dict[str, Any], cfg: Any, directory: str | Path) -> DataConfig:
    """The ``data_config`` entry of a config.json, checked against the model config ``cfg``.

    A checkpoint saved before models carried one gets a data config derived from what it records
    (:func:`~adaperceiver.models.data_config.derive_data_config`), with a one-line warning saying what
    was assumed.
    """
    path = Path(directory) / CONFIG_NAME
    dense = "dense" in meta
    if "data_config" in meta:
        try:
            dc = DataConfig.from_dict(meta["data_config"])
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: invalid data_config ({e})") from None
    else:
        dc, why = derive_data_config(meta, cfg.in_chans, cfg.img_size)
        logger.warning(f"{directory}: no data_config in {CONFIG_NAME} (written by 0.1, or from a model without one); "
                       f"assumed {describe(dc)} ({why})")
    if dc.in_chans != cfg.in_chans or (not dense and dc.input_size != cfg.img_size):
        raise UserError(f"{path}: data_config says {dc.in_chans}-channel {dc.input_size} px images but the model "
                        f"takes {cfg.in_chans}-channel {cfg.img_size} px ones")
    num_classes = getattr(cfg, "num_classes", None)
    if dc.class_names is not None and not dense and num_classes is not None and len(dc.class_names) > num_classes:
        raise UserError(f"{path}: data_config names {len(dc.class_names)} classes but the model has {num_classes} "
                        f"outputs")
    return dc


__all__ = [
    "ARCHITECTURES", "CONFIG_NAME", "FOREIGN_CONFIG_ARCHITECTURES", "WEIGHTS_NAME", "build_from_meta",
    "from_pretrained", "load_config", "load_data_config", "load_matching", "load_meta", "model_directory",
    "output_path", "read_data_config", "save_pretrained"
]
