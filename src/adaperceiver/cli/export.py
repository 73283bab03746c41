"""``adaperceiver export``: cut one configuration out of a model as a slim static model (and ONNX)."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import WEIGHTS_NAME, from_pretrained, model_directory, save_pretrained, write_json
from ..export import export_onnx
from ..models.inference import parse_dtype
from ..models.slim import slim
from ..models.util import num_parameters
from .common import add_device_option, command_device


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="cut one (tokens, depth, width) configuration out of a model as a slim static model",
        description="Write a static model of one configuration with physically sliced weights "
        "(model.safetensors + config.json, loadable with adaperceiver.from_pretrained), optionally as ONNX too.",
    )
    p.add_argument("--model", required=True,
                   help="model / run directory (from save_pretrained or training), or hf-hub:OWNER/NAME[@REVISION]")
    p.add_argument("--tokens", type=int, required=True, help="latent token count")
    p.add_argument("--depth", type=int, required=True, help="number of latent blocks")
    p.add_argument("--width", type=int, required=True, help="Matryoshka FFN width in embedding units")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs onnx + onnxscript)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="store the slim weights in this dtype (bfloat16 halves the file and runs several times faster "
                        "on CPUs with AMX; see docs/performance.md); default: as loaded")
    add_device_option(p)
    p.set_defaults(func=_cli_export)


def _cli_export(args) -> int:
    model = from_pretrained(args.model, map_location=command_device(args.device))
    small = slim(model, args.tokens, args.depth, args.width)
    if args.dtype:
        small = small.to(parse_dtype(args.dtype))
    out = Path(args.out)
    save_pretrained(small, out, extra={"slim_of": str(args.model),
                                       "configuration": {"tokens": args.tokens, "depth": args.depth, "width": args.width}})
    full_size = (model_directory(args.model) / WEIGHTS_NAME).stat().st_size
    size = (out / WEIGHTS_NAME).stat().st_size
    print(f"wrote {out}: {num_parameters(small) / 1e6:.3f} M parameters (adaptive model {num_parameters(model) / 1e6:.3f} M), "
          f"{size / 1e6:.2f} MB weights (was {full_size / 1e6:.2f} MB)")
    if args.onnx:
        try:
            path = export_onnx(small, out / "model.onnx")
        except ImportError as e:
            raise ValueError(f"ONNX export needs optional packages: pip install onnx onnxscript ({e})") from None
        write_json(out / "data_config.json", small.data_config.to_dict())  # how to prepare the ONNX model's input
        print(f"wrote {path} and {out / 'data_config.json'} (how its input images are prepared)")
    return 0
