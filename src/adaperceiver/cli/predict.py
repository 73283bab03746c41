"""``adaperceiver predict``: the top-k classes of image files, at the full or a chosen configuration."""

from __future__ import annotations

import sys
from pathlib import Path

from ..adapt.budget import select_configuration
from ..checkpoint import from_pretrained, write_json
from ..data.transforms import IMAGE_EXTENSIONS
from ..errors import UserError
from ..evaluation.predict import Predictor, format_predictions
from ..evaluation.reports import write_csv
from ..models.data_config import describe
from .common import add_device_option, command_device


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify image files: top-k class names and probabilities",
        description="Classify images with a trained classifier, each prepared as the model's data config says "
        "(size, channels, resize + crop, normalisation; printed). Prints a table; --output writes CSV or JSON.")
    p.add_argument("images", nargs="+", help="image files, folders (every image file under them, sorted), or - to "
                   "read paths from stdin, one per line")
    p.add_argument("--model", required=True, help="model / run directory")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default: 5)")
    p.add_argument("--tokens", type=int, default=None, help="latent tokens (default: all)")
    p.add_argument("--depth", type=int, default=None, help="blocks (default: all)")
    p.add_argument("--width", type=int, default=None, help="FFN width (default: full)")
    p.add_argument("--exit-confidence", type=float, default=None, metavar="TAU",
                   help="confidence early exit: each image stops after the first block whose top probability is "
                   ">= TAU (e.g. 0.9); the per-input saving that measured best (docs/paper_claims.md)")
    p.add_argument("--sweep", default=None, help="with --max-gflops / --max-ms: the model's sweep.json (or its "
                   "directory); runs the most accurate configuration within the budget")
    p.add_argument("--max-gflops", type=float, default=None, help="FLOPs budget per image (needs --sweep)")
    p.add_argument("--max-ms", type=float, default=None, help="latency budget per image at batch 1 (needs --sweep)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--output", default=None, help="write the predictions to this .csv or .json file")
    add_device_option(p)
    p.set_defaults(func=_cli_predict)


def image_paths(items: list[str], stdin=None) -> list[Path]:
    """Files as given, folders expanded to the image files under them, ``-`` read from ``stdin``."""
    paths: list[Path] = []
    for item in items:
        if item == "-":
            paths += [Path(line.strip()) for line in (stdin or sys.stdin) if line.strip()]
            continue
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UserError(f"folder {p} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif not p.exists():
            raise UserError(f"no image file or folder at {p}")
        else:
            paths.append(p)
    if not paths:
        raise UserError("no images given")
    return paths


def _cli_predict(args) -> int:
    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--output must end in .csv or .json, got {args.output}")
    budget = args.max_gflops is not None or args.max_ms is not None
    if budget and args.sweep is None:
        raise UserError("--max-gflops / --max-ms choose a configuration from a sweep: give --sweep SWEEP.json")
    if budget and any(v is not None for v in (args.tokens, args.depth, args.width)):
        raise UserError("give either --tokens/--depth/--width or a budget (--max-gflops / --max-ms), not both")
    if args.exit_confidence is not None and (budget or args.depth is not None):
        raise UserError("--exit-confidence chooses the depth per image: give it without --depth or a budget")
    if args.exit_confidence is not None and not 0.0 <= args.exit_confidence <= 1.0:
        raise UserError(f"--exit-confidence must be a probability in [0, 1], got {args.exit_confidence}")
    paths = image_paths(args.images)
    model = from_pretrained(args.model, map_location=command_device(args.device))
    predictor = Predictor(model, batch_size=args.batch_size)
    setting = dict(tokens=args.tokens, depth=args.depth, width=args.width)
    if budget:
        row = select_configuration(args.sweep, model, args.max_ms, args.max_gflops, 1)
        setting = dict(tokens=row["tokens"], depth=row["depth"], width=row["width"])
    shown = ", ".join(f"{k}={v}" for k, v in setting.items() if v is not None) or "full configuration"
    if args.exit_confidence is not None:
        shown += f", early exit at confidence {args.exit_confidence:g}"
    print(f"{len(paths)} image(s) prepared as {describe(predictor.data_config)}; {shown}", file=sys.stderr)
    preds = predictor(paths, k=args.top_k, **setting, exit_confidence=args.exit_confidence)
    print(format_predictions(preds))
    if args.output:
        out = Path(args.output)
        if out.suffix.lower() == ".json":
            write_json(out, {"model": str(args.model), "data_config": predictor.data_config.to_dict(),
                             "setting": setting, "exit_confidence": args.exit_confidence, "predictions": [p.to_dict() for p in preds]})
        else:
            write_csv([{"image": p.source, **{f"top{i + 1}": lbl for i, lbl in enumerate(p.labels)},
                        **{f"p{i + 1}": round(q, 6) for i, q in enumerate(p.probs)}} for p in preds], out)
        print(f"wrote {out}", file=sys.stderr)
    return 0
