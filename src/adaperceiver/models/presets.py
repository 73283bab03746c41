"""Named model presets: ``create_model("adaperceiver_tiny", num_classes=10)``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from torch import nn

from .adaperceiver import AdaPerceiver, AdaPerceiverConfig, build_model
from .flexivit import FlexiViT, FlexiViTConfig
from .vit import StaticViT, ViTConfig

_PRESETS: dict[str, Callable[[], dict[str, Any]]] = {}
# peers (baselines built from another config class): name -> (config class, model class)
_PEERS: dict[str, tuple[type, type[nn.Module]]] = {}


def register_preset(name: str):
    """Decorator: register a function returning config values under ``name``."""

    def deco(fn: Callable[[], dict[str, Any]]):
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        _PRESETS[name] = fn
        return fn

    return deco


def register_peer(name: str, config_cls: type, model_cls: type[nn.Module]):
    """Decorator: register a baseline preset (a function returning ``config_cls`` values) built as ``model_cls``."""

    def deco(fn: Callable[[], dict[str, Any]]):
        register_preset(name)(fn)
        _PEERS[name] = (config_cls, model_cls)
        return fn

    return deco


def list_models() -> list[str]:
    """The preset names (deprecated aliases not included)."""
    return sorted(_PRESETS)


def preset_config(name: str, **overrides: Any) -> Any:
    """The config of preset ``name`` with ``overrides`` applied (any field of its config class:
    :class:`AdaPerceiverConfig`, or the peer's, e.g. :class:`~adaperceiver.models.vit.ViTConfig`)."""
    if name in _ALIASES:
        values = {**_resolve_alias(name)(), **overrides}
    elif name in _PRESETS:
        values = {**_PRESETS[name](), **overrides}
    else:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    if name in _PEERS:
        config_cls = _PEERS[name][0]
        known = {f.name for f in fields(config_cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model {name!r} is a baseline built from {config_cls.__name__}: it has no field(s) "
                             f"{unknown}; its fields are {sorted(known)}")
        return config_cls(**values)
    if values.get("task") == "dense" and "readout" not in overrides:
        values["readout"] = "query"  # a dense model reads out one query per patch; "mean" is for logits
    if "num_latents" in overrides and "token_grans" not in overrides:
        n = overrides["num_latents"]
        values["token_grans"] = tuple(g for g in values["token_grans"] if g < n) + (n,)
    return AdaPerceiverConfig.from_dict(values)


def is_peer(name: str) -> bool:
    """Whether preset ``name`` builds a peer (a static baseline such as ``vit_tiny``), not an AdaPerceiver."""
    return name in _PEERS


def build_preset(name: str, cfg: Any) -> AdaPerceiver | nn.Module:
    """The model of preset ``name`` built from ``cfg`` (its :func:`preset_config`, perhaps adjusted)."""
    return _PEERS[name][1](cfg) if name in _PEERS else build_model(cfg)


def create_model(name: str, **overrides: Any) -> AdaPerceiver | nn.Module:
    """Build a freshly initialised model from a preset, e.g. ``create_model("adaperceiver_tiny", in_chans=1)``
    (the peers ``vit_tiny*`` / ``flexivit_tiny*`` build a :class:`StaticViT` / :class:`FlexiViT`)."""
    return build_preset(name, preset_config(name, **overrides))


def _paper_tiny() -> dict[str, Any]:
    return dict(img_size=28, patch_size=4, in_chans=1, embed_dim=64, num_heads=4, depth=4, ffn_ratio=2.0,
                num_latents=32, token_grans=(8, 16, 24, 32), widths=(32, 48, 64), ls_init=0.1, num_classes=10)


# the recipe that learns best here (docs/training.md, "Learning efficiency"): logits from
# LayerNorm(mean of the latent prefix), no patch-embedding MLP, LayerScale from 0.01, RoPE base 10,
# PyTorch's default layer init (docs/paper_claims.md, "Baseline strength")
_LEARNING_RECIPE = dict(readout="mean", head_norm=True, embed_mlp=False, ls_init=0.01, rope_theta=10.0, init="torch")
_AT_64PX = dict(img_size=64, patch_size=8)  # 64 patches of 8x8


@register_preset("adaperceiver_tiny")
def _tiny() -> dict[str, Any]:
    """The default: trains on 2 CPU cores in minutes at 28x28 (Fashion-MNIST); the paper's tiny layout with
    the recipe that learns best here (mean read-out + head LayerNorm, no embedding MLP, LayerScale 0.01,
    RoPE base 10; as fast per step as a plain ViT, docs/training.md)."""
    return {**_paper_tiny(), **_LEARNING_RECIPE}


@register_preset("adaperceiver_tiny64")
def _tiny64() -> dict[str, Any]:
    """``adaperceiver_tiny`` for 64x64 inputs (cluttered Fashion-MNIST): patch 8, so 64 patches."""
    return {**_tiny(), **_AT_64PX}


@register_preset("adaperceiver_tiny_paper")
def _tiny_paper() -> dict[str, Any]:
    """The paper's own layout at tiny size — the layout of the released weights (one learned output
    query read out by cross-attention, patch-embedding MLP, LayerScale 0.1, RoPE base 10,000). Learns
    more slowly from scratch than ``adaperceiver_tiny`` (docs/training.md)."""
    return _paper_tiny()


# earlier names: each still builds the config it built before, and warns once naming the replacement
_ALIASES: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "adaperceiver_tiny_v2": ("adaperceiver_tiny", lambda: dict(_paper_tiny(), readout="mean", head_norm=True)),
    "adaperceiver_tiny_v3": ("adaperceiver_tiny", lambda: dict(_paper_tiny(), readout="mean", head_norm=True,
                                                               embed_mlp=False, ls_init=0.01)),
    "adaperceiver_tiny_v4": ("adaperceiver_tiny", _tiny),
    "adaperceiver_tiny64_v2": ("adaperceiver_tiny64", lambda: dict(_paper_tiny(), readout="mean", head_norm=True,
                                                                   **_AT_64PX)),
}
_warned: set[str] = set()


# 0.1 names whose preset changed recipe in 0.2: a run saved under them is resumed with what it trained
_RENAMED = {"adaperceiver_tiny": {}, "adaperceiver_tiny64": dict(_AT_64PX)}


def migrate_run_preset(train: dict[str, Any], model: dict[str, Any] | None) -> dict[str, Any]:
    """A saved run's ``train`` section with its preset name moved to the one that builds what it trained.

    Runs of 0.1 trained ``adaperceiver_tiny`` / ``adaperceiver_tiny64`` in the paper's layout, which is
    now ``adaperceiver_tiny_paper``; the saved ``model`` config (the whole config) says which layout a
    run has. Anything else is returned unchanged.
    """
    name, overrides = train.get("model"), dict(train.get("model_overrides") or {})
    if name not in _RENAMED or not isinstance(model, dict):
        return train
    defaults = AdaPerceiverConfig()
    recipe = {k: model.get(k, getattr(defaults, k)) for k in _LEARNING_RECIPE}  # a key older configs lack has its default
    extra = {k: v for k, v in _RENAMED[name].items() if k not in overrides}
    try:
        now = preset_config(name, **overrides)
        paper = preset_config("adaperceiver_tiny_paper", **overrides, **extra)
    except (TypeError, ValueError):
        return train  # overrides that build nothing: the usual checks say why
    if all(getattr(now, k) == v for k, v in recipe.items()) or any(getattr(paper, k) != v for k, v in recipe.items()):
        return train  # neither layout: leave it to the usual checks
    warnings.warn(f"run trained preset {name!r} of 0.1 (the paper's layout): resuming it as "
                  f"'adaperceiver_tiny_paper'{' with ' + str(extra) if extra else ''}", FutureWarning, stacklevel=2)
    return {**train, "model": "adaperceiver_tiny_paper", "model_overrides": {**overrides, **extra}}


def _resolve_alias(name: str) -> Callable[[], dict[str, Any]]:
    new, values = _ALIASES[name]
    if name not in _warned:
        _warned.add(name)
        same = "the same config" if values is _PRESETS.get(new) else "its old config (a different recipe)"
        warnings.warn(f"model preset {name!r} is deprecated and builds {same}; use {new!r} "
                      f"(docs/training.md, 'Presets')", FutureWarning, stacklevel=4)
    return values


@register_preset("adaperceiver_small")
def _small() -> dict[str, Any]:
    return dict(img_size=224, patch_size=16, in_chans=3, embed_dim=384, num_heads=6, depth=12, ffn_ratio=2.57,
                num_latents=128, token_grans=(16, 32, 48, 64, 96, 128), widths=(192, 288, 384), ls_init=1e-5,
                num_classes=1000)


@register_preset("adaperceiver_base")
def _base() -> dict[str, Any]:
    """The paper's main model (ImageNet-1K fine-tune layout: patch 16 at 224 px)."""
    return dict(img_size=224, patch_size=16, in_chans=3, embed_dim=832, num_heads=13, depth=21, ffn_ratio=2.57,
                num_latents=256, token_grans=(32, 64, 96, 128, 192, 256), widths=(416, 624, 832), ls_init=1e-5,
                num_classes=1000)


# --------------------------------------------------------------------------------------------------
# peers: the plain ViT family and FlexiViT, the baselines of docs/paper_claims.md
@register_peer("vit_tiny", ViTConfig, StaticViT)
def _vit_tiny() -> dict[str, Any]:
    """Plain pre-norm ViT, width 64, 4 blocks, 4 heads, MLP ratio 2, patch 4, class token: 15.77 MFLOPs at
    28 px (the width and depth of ``adaperceiver_tiny``); PyTorch's default init (docs/paper_claims.md)."""
    return dict(img_size=28, patch_size=4, in_chans=1, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
                num_classes=10, pool="cls", init="torch")


@register_peer("vit_tiny_x2", ViTConfig, StaticViT)
def _vit_tiny_x2() -> dict[str, Any]:
    """``vit_tiny`` at width 96: 33.48 MFLOPs at 28 px (2.1x)."""
    return dict(_vit_tiny(), embed_dim=96)


@register_peer("vit_tiny_x4", ViTConfig, StaticViT)
def _vit_tiny_x4() -> dict[str, Any]:
    """``vit_tiny`` at width 96 and 8 blocks: 66.81 MFLOPs at 28 px (4.2x)."""
    return dict(_vit_tiny(), embed_dim=96, depth=8)


@register_peer("flexivit_tiny", FlexiViTConfig, FlexiViT)
def _flexivit_tiny() -> dict[str, Any]:
    """``vit_tiny`` trained at patch sizes 4, 7 and 14 (49, 16 and 4 tokens at 28 px), PI-resized kernel."""
    return dict(_vit_tiny(), patch_sizes=(4, 7, 14))


@register_peer("flexivit_tiny64", FlexiViTConfig, FlexiViT)
def _flexivit_tiny64() -> dict[str, Any]:
    """``flexivit_tiny`` for 64 px canvases: patch sizes 8, 16 and 32 (64, 16 and 4 tokens)."""
    return dict(_vit_tiny(), img_size=64, patch_size=8, patch_sizes=(8, 16, 32))


__all__ = ["create_model", "list_models", "preset_config", "register_peer", "register_preset"]
