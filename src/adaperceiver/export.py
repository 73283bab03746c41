"""Slim export: cut one configuration out of an adaptive model as a plain static network.

``slim(model, tokens, depth, width)`` builds the static model of that shape
(``model.cfg.static_config(...)``) and copies the weights into it with the unused parts physically
removed: blocks past ``depth`` are dropped and every kept FFN keeps only its first
``int(width * ffn_ratio)`` hidden units (rows of fc1, columns of fc2). The result has fewer
parameters, a smaller safetensors file, no run-time slicing, and the same outputs as
``model(x, tokens=tokens, depth=depth, width=width)``. It is what one ships to a device:
it compiles with ``torch.compile`` and exports to ONNX (:func:`export_onnx`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from .model import AdaPerceiver, build_model

# the only tensors whose shape a slim model may change: the Matryoshka FFNs of the latent blocks
_SLICEABLE = re.compile(r"^blocks\.\d+\.mlp\.fc[12]\.(weight|bias)$")


def _check_slim_args(model: AdaPerceiver, tokens: int, depth: int, width: int) -> None:
    if not isinstance(model, AdaPerceiver):
        raise ValueError(f"slim() needs an AdaPerceiver model, got {type(model).__name__}")
    model.resolve_tokens(tokens)
    model.resolve_depth(depth)
    model.resolve_width(width, 1)
    last = model.cfg.token_grans[-1]
    if model.cfg.latent_mask == "block" and tokens > last:
        # past the last granularity the adaptive mask lets those latents see only the first `last`
        # latents; a static model cannot reproduce that with its own granularities
        raise ValueError(f"slim() supports tokens up to the last granularity ({last}) of this model "
                         f"(granularities {list(model.cfg.token_grans)}), got {tokens}")


@torch.no_grad()
def slim(model: AdaPerceiver, tokens: int, depth: int, width: int) -> AdaPerceiver:
    """A static model equal to ``model`` run at ``(tokens, depth, width)``, with sliced weights.

    The returned module is a plain :class:`AdaPerceiver` whose config is
    ``model.cfg.static_config(tokens, depth, width)``; calling it without arguments runs that
    configuration. It is in eval mode, on the device and dtype of ``model``.
    """
    _check_slim_args(model, tokens, depth, width)
    static = build_model(model.cfg.static_config(tokens, depth, width))
    source = model.state_dict()
    target = static.state_dict()
    sliced: dict[str, Tensor] = {}
    for name, dst in target.items():
        if name not in source:
            raise RuntimeError(f"static model has parameter {name!r} that the adaptive model lacks")
        src = source[name]
        if src.shape != dst.shape:
            if not _SLICEABLE.match(name) or src.dim() != dst.dim() or any(s < d for s, d in zip(src.shape, dst.shape)):
                raise RuntimeError(f"cannot slice {name}: {tuple(src.shape)} -> {tuple(dst.shape)}")
            src = src[tuple(slice(0, n) for n in dst.shape)]  # Matryoshka: keep the first units
        sliced[name] = src.clone()
    static.load_state_dict(sliced, strict=True)
    ref = next(model.parameters())
    static = static.to(device=ref.device, dtype=ref.dtype).eval()
    static.latent_mask(tokens, ref.device)  # fill the mask cache: no tensor->bool checks while tracing
    return static


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _Logits(nn.Module):
    """Wrap a static model so that tracing sees one tensor in, one tensor out."""

    def __init__(self, model: AdaPerceiver):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def export_onnx(model: AdaPerceiver, path: str | Path, batch_size: int = 1, dynamic_batch: bool = True,
                opset: int = 18) -> Path:
    """Export a (slim) model to ONNX at its trained image size; the batch axis is dynamic by default.

    Needs the optional ``onnx`` and ``onnxscript`` packages (``pip install onnx onnxscript``).
    """
    cfg = model.cfg
    if cfg.latent_mask == "block" and cfg.num_latents != cfg.token_grans[-1]:
        raise ValueError("export_onnx expects a slim/static model (use slim() first)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = next(model.parameters())
    x = torch.randn(max(batch_size, 2) if dynamic_batch else batch_size, cfg.in_chans, cfg.img_size, cfg.img_size,
                    device=ref.device, dtype=ref.dtype)
    model.eval()
    model.latent_mask(cfg.num_latents, ref.device)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    torch.onnx.export(_Logits(model).eval(), (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_shapes=dynamic, opset_version=opset, dynamo=True, verbose=False,
                      external_data=num_parameters(model) * ref.element_size() > 1.5e9)  # one file below protobuf's 2 GB
    return path


def register_cli(sub) -> None:
    p = sub.add_parser(
        "export",
        help="cut one (tokens, depth, width) configuration out of a model as a slim static model",
        description="Write a static model of one configuration with physically sliced weights "
        "(model.safetensors + config.json, loadable with adaperceiver.from_pretrained), optionally as ONNX too.",
    )
    p.add_argument("--model", required=True, help="model / run directory (from save_pretrained or training)")
    p.add_argument("--tokens", type=int, required=True, help="latent token count")
    p.add_argument("--depth", type=int, required=True, help="number of latent blocks")
    p.add_argument("--width", type=int, required=True, help="Matryoshka FFN width in embedding units")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs onnx + onnxscript)")
    p.set_defaults(func=_cli_export)


def _cli_export(args) -> int:
    from .checkpoint import WEIGHTS_NAME, from_pretrained, save_pretrained

    model = from_pretrained(args.model)
    small = slim(model, args.tokens, args.depth, args.width)
    out = Path(args.out)
    save_pretrained(small, out, extra={"slim_of": str(args.model),
                                       "configuration": {"tokens": args.tokens, "depth": args.depth, "width": args.width}})
    full_size = (Path(args.model) / WEIGHTS_NAME).stat().st_size
    size = (out / WEIGHTS_NAME).stat().st_size
    print(f"wrote {out}: {num_parameters(small) / 1e6:.3f} M parameters (adaptive model {num_parameters(model) / 1e6:.3f} M), "
          f"{size / 1e6:.2f} MB weights (was {full_size / 1e6:.2f} MB)")
    if args.onnx:
        try:
            path = export_onnx(small, out / "model.onnx")
        except ImportError as e:
            raise ValueError(f"ONNX export needs optional packages: pip install onnx onnxscript ({e})") from None
        print(f"wrote {path}")
    return 0


__all__ = ["export_onnx", "num_parameters", "slim"]
