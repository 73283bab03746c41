"""``adaperceiver sweep``: metric, GFLOPs and latency of every configuration of a trained model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from ..checkpoint import from_pretrained, load_meta, model_directory, output_path
from ..errors import UserError
from ..evaluation import format_table, run_sweep
from ..evaluation.tensorboard import LOGGERS, TENSORBOARD_DIR, log_sweep, summary_writer
from .common import add_data_options, add_device_option, add_inference_options, command_device, load_dataset, parse_batch_sizes
from .config_file import add_config_file_options, write_config_yaml


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="evaluate a trained model at every (tokens, depth, width): metric, GFLOPs, latency, Pareto plot",
        description="Evaluate a trained model over its whole configuration grid (token granularities x depths "
        "x widths) and write sweep.csv, sweep.json and pareto.png. Accuracy for all tokens and depths at one "
        "width comes from one anytime pass per batch; GFLOPs are counted with torch.utils.flop_counter; latency "
        "is the median over repeats of the model alone at the stated batch sizes.",
    )
    p.add_argument("--model", required=True, help="model / run directory, or hf-hub:OWNER/NAME[@REVISION] (loaded with "
                   "adaperceiver.from_pretrained)")
    p.add_argument("--data", default="fashion-mnist",
                   help="dataset: fashion-mnist, digits or imagefolder:PATH (default: fashion-mnist)")
    p.add_argument("--split", default="test", help="dataset split to evaluate (default: test)")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/sweep; for a hub model ./OWNER--NAME/sweep)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    p.add_argument("--latency-batch-sizes", default="1,64",
                   help="comma-separated batch sizes to time every configuration at (default: 1,64; empty: no timing)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--metric", default=None,
                   help="metric name (default: the model's task: classification, segmentation or depth)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--logger", choices=LOGGERS, default="csv",
                   help="besides sweep.csv (always written): tensorboard writes every configuration's metrics and the "
                        "Pareto figure to OUT/tensorboard (needs pip install 'adaperceiver[tensorboard]'; default csv)")
    add_data_options(p)
    add_inference_options(p)
    add_device_option(p)
    add_config_file_options(p)
    p.set_defaults(func=_cli_sweep)


def _check_targets(args, data) -> None:
    """Refuse a dataset whose targets are not the kind the metric scores (image labels vs per-pixel maps)."""
    _, target = data[0]
    dense_data = isinstance(target, torch.Tensor) and target.dim() >= 1
    if args.metric in ("classification", "segmentation", "depth") and dense_data != (args.metric != "classification"):
        kind = "per-pixel (segmentation or depth)" if dense_data else "one label per image (classification)"
        raise ValueError(f"{args.model} is swept with metric {args.metric!r} but dataset {args.data!r} has {kind} "
                         f"targets: a {'classifier' if args.metric == 'classification' else args.metric + ' model'} "
                         f"needs matching data")


def _cli_sweep(args) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    sizes = parse_batch_sizes(args.latency_batch_sizes)
    if args.logger == "tensorboard":
        summary_writer()  # a missing package fails before the sweep, not after it
    device = command_device(args.device)
    model = from_pretrained(args.model, map_location=device)
    if args.metric is None:  # the task the model was saved as (a dense task model says so)
        task = getattr(model, "task", None)
        args.metric = task if task in ("segmentation", "depth") else "classification"
    try:
        data = load_dataset(args.data, args.split, model, args)
    except UserError:  # the data does not fit the model's preparation; is it even the model's kind of data?
        _check_targets(args, load_dataset(args.data, args.split))
        raise
    _check_targets(args, data)
    if args.limit is not None:
        data = Subset(data, range(min(args.limit, len(data))))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    out = Path(args.out) if args.out else output_path(args.model, "sweep")
    image, _ = data[0]
    size = getattr(getattr(model, "cfg", None), "img_size", None)
    if size is not None and tuple(image.shape[-2:]) != (size, size):
        raise ValueError(f"--data {args.data} gives {image.shape[-2]}x{image.shape[-1]} images, {args.model} was trained "
                         f"on {size}x{size}: sweep it on data of its own size")
    write_config_yaml(args, out)
    rows = run_sweep(model, loader, out, metric=args.metric, latency_batch_sizes=sizes,
                     progress=not args.no_progress, device=device, dtype=args.dtype, compile=args.compile)
    print(format_table(rows, sizes))
    print(f"wrote {out / 'sweep.csv'}, {out / 'sweep.json'}, {out / 'pareto.png'}")
    if args.logger == "tensorboard":
        step = load_meta(model_directory(args.model)).get("step")  # the training step of the swept weights, when they come from a run
        log_sweep(out / TENSORBOARD_DIR, rows, out / "pareto.png", step=step if isinstance(step, int) else 0)
        print(f"wrote TensorBoard events to {out / TENSORBOARD_DIR}")
    return 0
