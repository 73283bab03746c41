"""``adaperceiver convert``: a checkpoint of the paper's reference code into a model directory."""

from __future__ import annotations

import sys
import warnings

from ..checkpoint import CONFIG_NAME, HUB_PREFIX, WEIGHTS_NAME, hub_snapshot, save_pretrained
from ..errors import UserError
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
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cli_convert)


def _cli_convert(args) -> int:
    if (args.checkpoint is None) == (args.from_hub is None):
        raise UserError("give the checkpoint to convert as a path or as --from-hub REPO_ID[@REVISION], not "
                        + ("both" if args.checkpoint else "neither"))
    source = args.checkpoint or hub_snapshot(args.from_hub, (CONFIG_NAME, WEIGHTS_NAME))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnverifiedConfigWarning)
        model = load_reference(source, args.config, section=args.section, semantics=args.semantics)
    for w in caught:
        if issubclass(w.category, UnverifiedConfigWarning):
            print(f"adaperceiver convert: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    save_pretrained(model, args.out, extra={"converted_from": str(args.checkpoint or HUB_PREFIX + args.from_hub)})
    n = num_parameters(model)
    c = model.cfg
    print(f"wrote {args.out}: {c.task} model, {n / 1e6:.2f} M parameters, D={c.embed_dim}, depth={c.depth}, "
          f"tokens<={c.num_latents} (granularities {list(c.token_grans)}), widths {list(c.widths)}; "
          f"{token_count_rules(c)}")
    return 0
