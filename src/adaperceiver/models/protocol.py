"""What the sweep, the budget and the cost functions need from a model: :class:`AdaptiveModel`.

AdaPerceiver implements it, and so does any peer family that should be swept, budgeted and costed by
the same tools (a plain ViT at its one setting, a FlexiViT over patch sizes): a space of settings, a
forward at a setting, anytime read-outs over its depths and token counts, and the shape of its input.
A model that can say which parameters a setting uses also implements :class:`CountsActiveParameters`;
without it every parameter counts. The policy needs more than this (patch embeddings computed once,
per-image settings) and takes an :class:`~adaperceiver.models.adaperceiver.AdaPerceiverClassifier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from .outputs import AnytimeOutput


@runtime_checkable
class AdaptiveModel(Protocol):
    """A model run at a :class:`~adaperceiver.models.setting.Setting` ``(tokens, depth, width)``."""

    cfg: Any  # has img_size and in_chans (example inputs of the cost functions) and to_dict() (recorded with results)

    def configurations(self) -> Sequence[Sequence[int]]:
        """The trained settings, the grid a sweep evaluates (tokens outermost)."""
        ...

    def resolve_configuration(self, tokens: int | None, depth: int | None, width: int | None) -> tuple[int, int, int | None]:
        """Check one setting (None: the full value) -> ``(tokens, blocks, FFN hidden units or None for all)``;
        a setting the model cannot run raises ValueError naming what it can."""
        ...

    def forward(self, x: Tensor, tokens: int | None = None, depth: int | None = None, width: Any = None) -> Tensor:
        """The output at one setting."""
        ...

    def forward_anytime(self, x: Tensor, tokens: int | None = None, width: Any = None,
                        depths: Sequence[int] | None = None, token_counts: Sequence[int] | None = None) -> AnytimeOutput:
        """The outputs at every one of ``depths`` x ``token_counts`` (at one width) from one call."""
        ...


@runtime_checkable
class CountsActiveParameters(Protocol):
    """A model whose settings use only part of its parameters."""

    def active_parameters(self, tokens: int | None, depth: int | None, width: int | None) -> int:
        ...


@runtime_checkable
class DeploysSettingsAsModules(Protocol):
    """A model that runs each setting, once deployed, as a module of its own (a FlexiViT: a plain ViT with
    the kernel resized once); its cost is counted and timed on that module, not on the per-call path."""

    def at_setting(self, tokens: int | None, depth: int | None, width: int | None) -> nn.Module:
        ...


@runtime_checkable
class AdaptiveBackbone(AdaptiveModel, Protocol):
    """An AdaPerceiver backbone itself (not a wrapper): what slim export and fast inference take apart."""

    def latent_mask(self, num_tokens: int, device: Any) -> Tensor | None:
        ...

    def resolve_tokens(self, tokens: int | None) -> int:
        ...

    def resolve_depth(self, depth: int | None) -> int:
        ...

    def resolve_width(self, width: Any, batch_size: int) -> tuple[int | None, Tensor | None]:
        ...


def check_adaptive(model: object, what: str) -> None:
    """Refuse a model without the :class:`AdaptiveModel` interface, naming what is missing."""
    if not isinstance(model, AdaptiveModel):
        need = ("cfg", "configurations", "resolve_configuration", "forward", "forward_anytime")
        missing = [n for n in need if not hasattr(model, n)]
        raise ValueError(f"{what} needs an adaptive model (models.protocol.AdaptiveModel); "
                         f"{type(model).__name__} lacks {missing}")


__all__ = ["AdaptiveBackbone", "AdaptiveModel", "CountsActiveParameters", "DeploysSettingsAsModules", "check_adaptive"]
