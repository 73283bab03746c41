"""``adaperceiver convert``: a checkpoint of the paper's reference code into a model directory."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from ..checkpoint import CONFIG_NAME, HUB_PREFIX, WEIGHTS_NAME, hub_snapshot, save_pretrained
from ..errors import UserError
from ..models.data_config import DataConfig, describe, reference_data_config
from ..models.util import num_parameters
from ..reference import SEMANTICS, UnverifiedConfigWarning, load_reference, token_count_rules


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint of the paper's reference code into a model directory",
        description="Convert reference AdaPerceiver weights (a hub model directory, or a safetensors / torch "
        "pickle file with its config; 'module.' and '_orig_mod.' prefixes are removed) into this library's "
        "layout and write model.safetensors + config.json, loadable with adaperceiver.from_pretrained().",
    )
    p.add_argument("checkpoint", nargs="?", help="hub model directory (model.safetensors + config.json) or reference "
                   "weights file (.safetensors, .pt, .pth, .bin); or use --from-hub")
    p.add_argument("--from-hub", metavar="REPO_ID[@REVISION]",
                   help="the reference model of a Hugging Face hub repository (OWNER/NAME, optionally @branch, tag or "
                        "commit), fetched into your hub cache (HF_HOME / HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE "
                        "apply; needs pip install 'adaperceiver[hub]')")
    p.add_argument("--config",
                   help="JSON file with the reference constructor arguments (flat, or with the reference's "
                   "AdaPercevierConfig + ClassificationConfig/DensePredictionConfig sections); default for a "
                   "directory: its config.json")
    p.add_argument("--section", help="entry of the JSON to use when it describes several models (e.g. 'dense')")
    p.add_argument("--semantics", choices=SEMANTICS,
                   help="which reference model the weights come from, for token counts above max_latent_tokens "
                   "(default: from the config: flat without max_latent_tokens_mult = hub, else training)")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="text file with one class name per line, in output order (kept in the data config; "
                        "predict shows them)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cli_convert)


def _cli_convert(args) -> int:
    if (args.checkpoint is None) == (args.from_hub is None):
        raise UserError("give the checkpoint to convert as a path or as --from-hub REPO_ID[@REVISION], not "
                        + ("both" if args.checkpoint else "neither"))
    source = args.checkpoint or hub_snapshot(args.from_hub, (CONFIG_NAME, WEIGHTS_NAME))
    names = read_class_names(args.class_names) if args.class_names else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnverifiedConfigWarning)
        model = load_reference(source, args.config, section=args.section, semantics=args.semantics)
    for w in caught:
        if issubclass(w.category, UnverifiedConfigWarning):
            print(f"adaperceiver convert: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    c = model.cfg
    if names is not None and c.task == "classification" and len(names) != c.num_classes:
        raise UserError(f"{args.class_names} names {len(names)} classes but the checkpoint has {c.num_classes} outputs")
    model.data_config = converted_data_config(c.in_chans, c.img_size, names)
    save_pretrained(model, args.out, extra={"converted_from": str(args.checkpoint or HUB_PREFIX + args.from_hub)})
    n = num_parameters(model)
    print(f"wrote {args.out}: {c.task} model, {n / 1e6:.2f} M parameters, D={c.embed_dim}, depth={c.depth}, "
          f"tokens<={c.num_latents} (granularities {list(c.token_grans)}), widths {list(c.widths)}; "
          f"{token_count_rules(c)}")
    print(f"data config: {describe(model.data_config)}"
          + (f", {len(names)} class names" if names else ", no class names (give --class-names FILE)"))
    return 0


def converted_data_config(in_chans: int, img_size: int, names: list[str] | None) -> DataConfig:
    """The authors' preprocessing (CLIP mean/std, resize 256 -> crop 224 scaled to the model's size) for RGB
    models; mean / std 0.5 for other channel counts, which the paper never used."""
    if in_chans == 3:
        return reference_data_config(img_size, names)
    return DataConfig(img_size, in_chans, (0.5,) * in_chans, (0.5,) * in_chans, "bilinear", 224 / 256, "center",
                      None if names is None else tuple(names))


def read_class_names(path: str) -> list[str]:
    """One name per non-empty line of ``path``."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read class names from {path}: {e}") from None
    dupes = sorted({n for n in names if names.count(n) > 1})
    if not names or dupes:
        raise UserError(f"{path} must hold distinct class names, one per line; "
                        + (f"{dupes[:3]} appear twice" if dupes else "it is empty"))
    return names
