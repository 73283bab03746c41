"""Fast inference: an adaptive model prepared to run fixed configurations quickly.

``model.for_inference(dtype=torch.bfloat16, compile=True)`` returns an :class:`InferenceModel`.
It is called like the model (``fast(x, tokens=..., depth=..., width=...)``) and returns float32
outputs, but each configuration runs a slim static copy of the network (:func:`.slim.slim`: the
unused blocks dropped, the FFN weights cut to contiguous slices) with each block's LayerScale
folded into the linear layer before it, cast to ``dtype`` and, with ``compile=True``, compiled by
``torch.compile`` (inductor, weights frozen as constants). The slim copy of a configuration is
built on its first call and kept; shapes are static per configuration and batch size, so a
compiled graph is built once per (configuration, batch size) and reused on every later call (a
new batch size compiles once more; nothing recompiles per call).

What it buys on a CPU with bf16 matrix units (AMX / AVX-512-bf16) is measured by
``benchmarks/bench_inference.py`` (docs/performance.md).

The model module imports this one (``AdaPerceiver.for_inference``), so it does not import the
model module.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .inputs import check_images
from .protocol import AdaptiveBackbone
from .setting import Setting, SettingSpace
from .slim import slim

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``torch.float32`` / ``bfloat16`` / ``float16`` from a dtype or a name like ``"bf16"``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of float32, bfloat16, float16; got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


class InferenceModel(nn.Module):
    """An adaptive model run fast at fixed configurations (see the module docstring).

    ``model`` is a copy of the adaptive model in ``dtype`` (eval mode); it serves what is not one
    configuration (``forward_anytime``, per-sample widths). ``configuration(t, d, w)`` is the
    prepared static module of one configuration.
    """

    def __init__(self, model: nn.Module, dtype: str | torch.dtype | None = None, compile: bool = False,
                 backend: str | Callable = "inductor", compile_options: dict[str, Any] | None = None):
        super().__init__()
        if not isinstance(model, AdaptiveBackbone):
            raise ValueError(f"for_inference needs an AdaPerceiver model, got {type(model).__name__}")
        self.dtype = parse_dtype(dtype)
        self.compiled = bool(compile)
        self.backend = backend
        self.compile_options = {"freezing": True, **(compile_options or {})}
        self.model = copy.deepcopy(model).to(self.dtype).eval().requires_grad_(False)
        self.cfg = model.cfg
        self._static: dict[Setting, nn.Module] = {}
        self._runners: dict[Setting, Callable[[Tensor], Tensor]] = {}
        self.eval()

    def train(self, mode: bool = True) -> "InferenceModel":
        """Always eval mode: an inference copy has no training behaviour to switch on."""
        return super().train(False)

    # ----------------------------------------------------------------------------------------------
    def resolve(self, tokens: int | None, depth: int | None, width: int | None) -> Setting:
        """The configuration ``model(x, tokens, depth, width)`` runs, defaults filled in."""
        m = self.model
        if width is not None and not isinstance(width, int):
            raise ValueError("InferenceModel runs one configuration per call: width must be an int "
                             "(use .model for per-sample widths)")
        t, d = m.resolve_tokens(tokens), m.resolve_depth(depth)
        w = self.cfg.embed_dim if width is None else width
        m.resolve_width(w, 1)
        return Setting(t, d, w)

    # the adaptive model's validators (what a sweep or a budget checks its rows with)
    def resolve_tokens(self, tokens: int | None) -> int:
        return self.model.resolve_tokens(tokens)

    def resolve_depth(self, depth: int | None) -> int:
        return self.model.resolve_depth(depth)

    def resolve_width(self, width: Any, batch_size: int) -> tuple[int | None, Tensor | None]:
        return self.model.resolve_width(width, batch_size)

    def resolve_configuration(self, tokens: int | None, depth: int | None, width: int | None) -> tuple[int, int, int | None]:
        return self.model.resolve_configuration(tokens, depth, width)

    @property
    def space(self) -> SettingSpace:
        return self.model.space

    def configurations(self) -> list[Setting]:
        return self.model.configurations()

    @property
    def num_blocks(self) -> int:
        return self.model.num_blocks

    def configuration(self, tokens: int | None = None, depth: int | None = None, width: int | None = None) -> nn.Module:
        """The slim static module of one configuration in ``dtype`` (built once, kept)."""
        key = self.resolve(tokens, depth, width)
        if key not in self._static:
            with torch.no_grad():
                static = fold_layer_scale(slim(self.model, *key).float()).to(self.dtype)
            self._static[key] = static.requires_grad_(False)
        return self._static[key]

    def runner(self, tokens: int | None = None, depth: int | None = None,
               width: int | None = None) -> Callable[[Tensor], Tensor]:
        """``x -> output`` of one configuration: the static module, compiled when asked."""
        key = self.resolve(tokens, depth, width)
        if key not in self._runners:
            static = self.configuration(*key)
            self._runners[key] = self._compile(static) if self.compiled else static
        return self._runners[key]

    def _compile(self, static: nn.Module) -> Callable[[Tensor], Tensor]:
        return compile_module(static, self.backend, self.compile_options)

    @torch.no_grad()
    def forward(self, x: Tensor, tokens: int | None = None, depth: int | None = None, width: int | None = None) -> Tensor:
        """``model(x, tokens, depth, width)`` computed in ``dtype``; the output is float32. ``x`` must meet
        the model's input contract (:func:`.inputs.check_images`: uint8 pixels are refused, as by the model)."""
        run = self.runner(tokens, depth, width)
        return run(check_images(x, self.cfg.in_chans, self.cfg.patch_size, self.dtype)).float()

    @torch.no_grad()
    def forward_anytime(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """``model.forward_anytime`` in ``dtype`` (eager); outputs float32."""
        out = self.model.forward_anytime(check_images(x, self.cfg.in_chans, self.cfg.patch_size, self.dtype), *args, **kwargs)
        out.outputs = out.outputs.float()
        return out

    def warm_up(self, configurations: Sequence[Setting], batch_size: int = 1) -> None:
        """Build (and with ``compile``, compile) these configurations now, at this batch size."""
        cfg = self.cfg
        x = torch.zeros(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, device=self.device)
        for c in configurations:
            self(x, *c)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, compiled={self.compiled}, configurations={sorted(self._static)}"


def compile_module(static: nn.Module, backend: str | Callable = "inductor",
                   compile_options: dict[str, Any] | None = None) -> Callable[[Tensor], Tensor]:
    """``x -> static(x)`` compiled with static shapes; ``freezing`` (default on) makes the weights constants."""
    # torch.compile keeps its graphs (and a limit of 8 of them) per code object, and every static
    # model of one class shares its forward's: give each module its own copy of that code so that
    # settings do not evict each other or fall back to eager past the limit
    fn = type(static).forward
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    import torch._inductor.config as inductor_config  # here: importing inductor is slow and rarely needed

    # inductor reads `freezing` from its global config when it compiles (lazily, on a call), and
    # torch.compile(options=...) does not reach that point: without this patch the weights stay
    # graph inputs and every Linear runs as a plain addmm instead of a prepacked oneDNN kernel
    opts = {"freezing": True, **(compile_options or {})}
    freezing = opts.pop("freezing")
    kw = {"options": opts or None} if backend == "inductor" else {"backend": backend}
    compiled = torch.compile(types.MethodType(own, static), dynamic=False, **kw)

    def run(x: Tensor) -> Tensor:
        with inductor_config.patch(freezing=freezing):
            return compiled(x)

    return run


class PeerInference(nn.Module):
    """A static peer (:class:`~.vit.StaticViT`, :class:`~.flexivit.FlexiViT`) prepared for fast inference
    the way :class:`InferenceModel` prepares an adaptive model: a copy in ``dtype`` (eval mode), called
    like the peer (``fast(x, tokens, depth, width)``), float32 out, each setting run by the peer's
    ``at_setting`` module (a FlexiViT's resized once, not per call); with ``compile``, compiled once per
    setting and batch size (weights frozen as constants). So every model of a comparison can be timed
    in the same mode."""

    def __init__(self, model: nn.Module, dtype: str | torch.dtype | None = None, compile: bool = False,
                 backend: str | Callable = "inductor", compile_options: dict[str, Any] | None = None):
        super().__init__()
        self.dtype = parse_dtype(dtype)
        self.compiled = bool(compile)
        self.backend = backend
        self.compile_options = compile_options
        self.model = copy.deepcopy(model).to(self.dtype).eval().requires_grad_(False)
        self.cfg = model.cfg
        self._runners: dict[tuple, Callable[[Tensor], Tensor]] = {}
        self.eval()

    def train(self, mode: bool = True) -> "PeerInference":
        return super().train(False)

    def resolve_configuration(self, tokens: int | None, depth: int | None, width: int | None) -> tuple[int, int, int | None]:
        return self.model.resolve_configuration(tokens, depth, width)

    def configurations(self) -> list[Setting]:
        return self.model.configurations()

    @torch.no_grad()
    def forward(self, x: Tensor, tokens: int | None = None, depth: int | None = None, width: int | None = None) -> Tensor:
        key = (tokens, depth, width)
        if key not in self._runners:
            static = self.model.at_setting(*key).to(self.dtype)
            self._runners[key] = compile_module(static, self.backend, self.compile_options) if self.compiled else static
        return self._runners[key](check_images(x, self.cfg.in_chans, self.cfg.patch_size, self.dtype)).float()


@torch.no_grad()
def fold_layer_scale(model: nn.Module) -> nn.Module:
    """Fold each block's LayerScale into the layer before it, in place: ``gamma * (W x + b)`` becomes
    ``(gamma W) x + gamma b`` (attention's ``proj``, the FFN's ``fc2``), two multiplies per block fewer."""
    for blk in getattr(model, "blocks", ()):
        for linear, name in ((blk.attn.proj, "ls1"), (blk.mlp.fc2, "ls2")):
            gamma = getattr(getattr(blk, name), "gamma", None)
            if gamma is None:
                continue
            linear.weight.mul_(gamma.view(-1, 1))
            if linear.bias is not None:
                linear.bias.mul_(gamma)
            setattr(blk, name, nn.Identity())
    return model


def for_inference(model: nn.Module, dtype: str | torch.dtype | None = torch.float32, compile: bool = False,
                  **kwargs: Any) -> InferenceModel:
    """``InferenceModel(model, dtype, compile)``; see :class:`InferenceModel`."""
    return InferenceModel(model, dtype, compile, **kwargs)


__all__ = ["DTYPES", "InferenceModel", "PeerInference", "compile_module", "fold_layer_scale", "for_inference", "parse_dtype"]
