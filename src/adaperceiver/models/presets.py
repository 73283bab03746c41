"""Named model presets: ``create_model("adaperceiver_tiny", num_classes=10)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .adaperceiver import AdaPerceiver, AdaPerceiverConfig, build_model

_PRESETS: dict[str, Callable[[], dict[str, Any]]] = {}


def register_preset(name: str):
    """Decorator: register a function returning config values under ``name``."""

    def deco(fn: Callable[[], dict[str, Any]]):
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        _PRESETS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_PRESETS)


def preset_config(name: str, **overrides: Any) -> AdaPerceiverConfig:
    """The config of preset ``name`` with ``overrides`` applied (any :class:`AdaPerceiverConfig` field)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    values = {**_PRESETS[name](), **overrides}
    if "num_latents" in overrides and "token_grans" not in overrides:
        n = overrides["num_latents"]
        values["token_grans"] = tuple(g for g in values["token_grans"] if g < n) + (n,)
    return AdaPerceiverConfig.from_dict(values)


def create_model(name: str, **overrides: Any) -> AdaPerceiver:
    """Build a freshly initialised model from a preset, e.g. ``create_model("adaperceiver_tiny", in_chans=1)``."""
    return build_model(preset_config(name, **overrides))


@register_preset("adaperceiver_tiny")
def _tiny() -> dict[str, Any]:
    """Trains on 2 CPU cores in minutes (28x28 or 32x32 inputs)."""
    return dict(img_size=28, patch_size=4, in_chans=1, embed_dim=64, num_heads=4, depth=4, ffn_ratio=2.0,
                num_latents=32, token_grans=(8, 16, 24, 32), widths=(32, 48, 64), ls_init=0.1, num_classes=10)


@register_preset("adaperceiver_tiny_v2")
def _tiny_v2() -> dict[str, Any]:
    """``adaperceiver_tiny`` with the read-out that learns as fast as a plain ViT (docs/training.md,
    "Learning efficiency"): logits from LayerNorm(mean of the latent prefix) instead of one output
    query's cross-attention. Same axes, same grid; for models trained with this library."""
    return dict(_tiny(), readout="mean", head_norm=True)


@register_preset("adaperceiver_tiny_v3")
def _tiny_v3() -> dict[str, Any]:
    """``adaperceiver_tiny_v2`` without the patch-embedding MLP and with LayerScale starting at 0.01:
    the closest to a plain ViT of its width and depth in the learning benchmark (docs/training.md)."""
    return dict(_tiny_v2(), embed_mlp=False, ls_init=0.01)


@register_preset("adaperceiver_tiny_v4")
def _tiny_v4() -> dict[str, Any]:
    """``adaperceiver_tiny_v3`` with RoPE base 10 instead of 10,000: every latent position then rotates
    every frequency pair, so the latents (one shared start vector) read and attend differently from the
    first step; it closes the 700-step gap to a plain ViT (docs/training.md)."""
    return dict(_tiny_v3(), rope_theta=10.0)


@register_preset("adaperceiver_tiny64")
def _tiny64() -> dict[str, Any]:
    """``adaperceiver_tiny`` for 64x64 inputs (cluttered Fashion-MNIST): patch 8, so 64 patches."""
    return {**_tiny(), "img_size": 64, "patch_size": 8}


@register_preset("adaperceiver_tiny64_v2")
def _tiny64_v2() -> dict[str, Any]:
    """``adaperceiver_tiny_v2`` (mean read-out + head LayerNorm) for 64x64 inputs: patch 8, 64 patches."""
    return {**_tiny_v2(), "img_size": 64, "patch_size": 8}


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


__all__ = ["create_model", "list_models", "preset_config", "register_preset"]
