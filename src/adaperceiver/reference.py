"""Load checkpoints written by the paper's reference implementation.

The reference code names its modules differently (``read_head.cattn.q`` here is ``read.attn.q``,
``process_latents.token`` is ``latent_token`` ...). :func:`convert_reference_state_dict` renames
the keys, :func:`config_from_reference` turns the reference constructor arguments into an
:class:`AdaPerceiverConfig`, and :func:`load_reference` does both for a file on disk.

:func:`reference_forward` reproduces the reference ``forward`` signature and its multi-output
modes (token-loss / layer-loss read-outs, batch-wide confidence exit) on top of this library's
model, for checking parity and for users porting code.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import load_strict, read_state_dict, strip_wrappers
from .errors import UserError
from .models.adaperceiver import AdaPerceiver, AdaPerceiverClassifier, AdaPerceiverConfig, build_model

# (reference pattern, our replacement), applied in order to every key
_KEY_RULES: list[tuple[str, str]] = [
    (r"^patch_embed\.embed\.proj\.", "patch_embed.proj."),
    (r"^patch_embed\.ffn\.", "patch_embed.mlp."),
    (r"^process_latents\.token$", "latent_token"),
    (r"^output_latents\.token$", "output_query"),
    (r"^output_latents\.proj\.", "query_proj."),
    (r"^(read|write)_head\.snk_norm\.", r"\1.norm_q."),
    (r"^(read|write)_head\.src_norm\.", r"\1.norm_kv."),
    (r"^(read|write)_head\.cattn\.", r"\1.attn."),
    (r"^blocks\.(\d+)\.ffn\.", r"blocks.\1.mlp."),
    (r"^output_adapter\.norm\.", "head_norm."),
    (r"^output_adapter\.ffn\.", "head_fc."),
]

# reference constructor argument -> our config field
_CONFIG_NAMES = {
    "embed_dim": "embed_dim", "num_heads": "num_heads", "depth": "depth", "max_latent_tokens": "num_latents",
    "max_latent_tokens_mult": "max_latents_mult", "rope_theta": "rope_theta", "ffn_ratio": "ffn_ratio",
    "qkv_bias": "qkv_bias", "proj_bias": "proj_bias", "ls_init_values": "ls_init", "mask_token_grans": "token_grans",
    "img_size": "img_size", "in_channels": "in_chans", "patch_size": "patch_size", "num_classes": "num_classes",
    "output_feat_dim": "num_classes", "use_embed_ffn": "embed_mlp", "use_output_ffn": "head_mlp",
}
# reference options this library implements only with these values
_SUPPORTED = {
    "use_fourier": (False,), "ffn_layer": ("mlp",), "act_layer": ("gelu",), "norm_layer": ("layernorm",),
    "adapter_type": ("patch_embed",), "process_token_init": ("learned", "norm_randn"), "block_mask": ("block", "none"),
    "attn_layer": ("flex", "full", "sdpa"),
}
# training-only options (dropout, init) and descriptive entries: no effect on the forward pass
_IGNORED = {"proj_drop", "attn_drop", "drop_path", "head_drop", "fourier_bands", "class", "conv_adapter_model"}
# values the weights cannot tell, so a config must state them
_REQUIRED = ("num_heads", "max_latent_tokens")

# Which reference model a checkpoint comes from decides what token counts above max_latent_tokens mean
# (docs/reference.md, "Token counts above the trained maximum"):
#   "training": the training code; RoPE table of max_latent_tokens * max_latent_tokens_mult positions,
#               never scaled; latents past the last granularity see the first g_K latents.
#   "hub":      the class the released weights load into; NTK-scaled RoPE above max_latent_tokens and
#               latents past the last granularity see all N latents; any token count.
SEMANTICS = ("training", "hub")


# bookkeeping entries of reference checkpoints that are not weights (EMA counters, cached RoPE tables and
# block masks; the last two are read by verify_reference before they are dropped)
_ROPE_KEYS = ("freqs_cis", "freq_cis")
_MASK_KEYS = ("block_mask",)
_DROP_KEYS = {"n_averaged", "ema_n_averaged", *_ROPE_KEYS, *_MASK_KEYS}


def convert_reference_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename reference keys to this library's names.

    Also removes wrapper prefixes, drops non-weight entries (EMA counters, cached RoPE tables) and
    restores the batch axis of ``pos_embed`` that the reference's raw EMA checkpoints omit.
    """
    out = {}
    for key, value in strip_wrappers(state).items():
        if key.rsplit(".", 1)[-1] in _DROP_KEYS:
            continue
        if key == "patch_embed.pos_embed" and value.dim() == 2:
            value = value.unsqueeze(0)
        new = key
        for pat, rep in _KEY_RULES:
            new = re.sub(pat, rep, new)
        out[new] = value
    return out


def reference_semantics(ref: Mapping[str, Any]) -> str:
    """Which reference model wrote these constructor arguments: ``"training"`` or ``"hub"``.

    The training code's config dataclasses come in sections (``AdaPercevierConfig`` + a task
    section) and carry ``max_latent_tokens_mult``; the hub class's ``config.json`` is flat and has
    no ``max_latent_tokens_mult`` (its constructor does not take one).
    """
    sectioned = any(isinstance(v, Mapping) and k.endswith("Config") for k, v in ref.items())
    return "training" if sectioned or "max_latent_tokens_mult" in ref else "hub"


def config_from_reference(ref: Mapping[str, Any], task: str | None = None, semantics: str | None = None) -> AdaPerceiverConfig:
    """Build our config from the reference's constructor arguments.

    ``ref`` is a flat dict or one with the reference's two sections (``AdaPercevierConfig`` plus
    ``ClassificationConfig`` / ``DensePredictionConfig``), as in the fixture's ``config.json``.
    ``semantics`` (``"training"`` or ``"hub"``; default: :func:`reference_semantics`) sets how
    token counts above ``max_latent_tokens`` behave, so the model computes what its source does.
    Under ``"training"`` without ``max_latent_tokens_mult`` the RoPE table length is unknown and
    counts above ``max_latent_tokens`` are refused.
    Values are checked like any model config (type and range), naming the reference argument.
    """
    if not isinstance(ref, Mapping):
        raise UserError(f"the reference config must be a JSON object of constructor arguments, got "
                        f"{type(ref).__name__} {ref!r:.60}")
    semantics = semantics or reference_semantics(ref)
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {list(SEMANTICS)}, got {semantics!r}")
    sections = {k: v for k, v in ref.items() if isinstance(v, Mapping) and k.endswith("Config")}
    flat: dict[str, Any] = {}
    if sections:  # only the constructor sections count; other entries are descriptive
        for k, v in sections.items():
            flat.update(v)
            if task is None and k.startswith("Dense"):
                task = "dense"
    else:
        flat = dict(ref)
    if task is None:
        task = "dense" if "output_feat_dim" in flat else "classification"
    missing = [k for k in _REQUIRED if k not in flat]
    if missing:
        raise ValueError(f"reference config lacks {missing}: the weights do not determine them")
    cfg: dict[str, Any] = {"task": task}
    for k, v in flat.items():
        if k in _SUPPORTED:
            if v not in _SUPPORTED[k]:
                raise ValueError(f"reference option {k}={v!r} is not supported; supported: {list(_SUPPORTED[k])}")
            if (k == "attn_layer" and v == "full") or (k == "block_mask" and v == "none"):
                cfg["latent_mask"] = "none"  # every latent sees all (the granularities are ignored)
        elif k in ("in_dim", "out_dim"):  # adapter dims of the training code's config; None = embed_dim
            if v is not None and v != flat.get("embed_dim"):
                raise ValueError(f"reference option {k}={v!r} is not supported: only adapters of embed_dim "
                                 f"({flat.get('embed_dim')}) or None")
        elif k == "mat_dims":  # None / [] when built without widths: keep our default widths
            if v:
                cfg["widths"] = v
        elif k == "max_latent_tokens_mult":
            continue  # read below, for the training semantics only
        elif k in _CONFIG_NAMES:
            cfg[_CONFIG_NAMES[k]] = v
        elif k not in _IGNORED:
            raise ValueError(f"unknown reference config key {k!r}")
    if "token_grans" not in cfg:
        cfg["token_grans"] = (cfg["num_latents"],)
    if semantics == "hub":
        cfg.update(rope_scaling="ntk", rope_base_len=cfg["num_latents"], beyond_grans="all", max_latents_mult=None)
    else:
        mult = flat.get("max_latent_tokens_mult")
        cfg.update(rope_scaling="none", beyond_grans="first_gk", max_latents_mult=mult)
        if mult is None:  # table length unknown: nothing above max_latent_tokens
            cfg["rope_base_len"] = cfg["num_latents"]
    cfg["latent_std"] = 0.02
    try:
        return AdaPerceiverConfig(**cfg)
    except ValueError as e:
        ours = {v: k for k, v in _CONFIG_NAMES.items() if k in flat}
        named = ", ".join(f"{o} is the reference's {r}" for o, r in ours.items() if o in str(e) and o != r)
        raise UserError(f"reference config: {e}{f' ({named})' if named else ''}") from None


def infer_shapes(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Config values that the (converted) weights themselves determine."""
    conv = state["patch_embed.proj.weight"]
    grid = state["patch_embed.pos_embed"].shape[1]
    side = int(round(grid ** 0.5))
    shapes = {
        "embed_dim": conv.shape[0], "in_chans": conv.shape[1], "patch_size": conv.shape[-1],
        "depth": len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
        "embed_mlp": "patch_embed.mlp.fc1.weight" in state,
        "task": "dense" if "query_proj.weight" in state else "classification",
        "head_mlp": "head_norm.weight" in state,
    }
    if side * side == grid:
        shapes["img_size"] = side * conv.shape[-1]
    head = state.get("head_fc.fc2.weight", state.get("head_fc.weight"))
    if head is not None:
        shapes["num_classes"] = head.shape[0]
    return shapes


class UnverifiedConfigWarning(UserWarning):
    """A reference config value that changes outputs and that the weights cannot confirm."""


def _cached(state: Mapping[str, Tensor], names: Sequence[str]) -> Tensor | None:
    return next((v for k, v in state.items() if k.rsplit(".", 1)[-1] in names), None)


def verify_reference(cfg: AdaPerceiverConfig, raw: Mapping[str, Tensor], state: Mapping[str, Tensor], path: Path) -> list[str]:
    """Check the config fields that change outputs against what the weights show; refuse a mismatch.

    Hidden sizes come from the FFN weights; a cached RoPE table (``freqs_cis``: complex ``(L, hd/2)`` or
    real ``(L, hd/2, 2)``) fixes the head count, ``rope_theta`` and the table length; a cached
    ``block_mask`` fixes the granularities. Returns the output-changing fields nothing could confirm.
    """
    from .models.layers import RotaryEmbedding
    from .models.masks import token_block_mask

    hidden = {v.shape[0] for k, v in state.items() if re.fullmatch(r"blocks\.\d+\.mlp\.fc1\.weight", k)}
    if len(hidden) == 1 and cfg.mlp_hidden not in hidden:  # (blocks that disagree: a damaged file, named on load)
        raise UserError(f"checkpoint {path} does not fit the config: its FFNs have {hidden.pop()} hidden units, "
                        f"the config's ffn_ratio {cfg.ffn_ratio:g} gives {cfg.mlp_hidden} (embed_dim {cfg.embed_dim})")
    unverified = ["num_heads", "rope_theta", "max_latent_tokens"]
    table = _cached(raw, _ROPE_KEYS)
    if table is not None:
        table = torch.view_as_real(table) if table.is_complex() else table
        if table.dim() != 3 or table.shape[-1] != 2:
            raise UserError(f"checkpoint {path}: its cached RoPE table has shape {tuple(table.shape)}, not (L, head_dim/2)")
        heads = cfg.embed_dim // (2 * table.shape[1]) if cfg.embed_dim % (2 * table.shape[1]) == 0 else None
        if heads != cfg.num_heads:
            raise UserError(f"checkpoint {path} does not fit the config: its RoPE table has {table.shape[1]} frequency "
                            f"pairs per head (head dim {2 * table.shape[1]}, so num_heads = {heads}), the config says "
                            f"num_heads {cfg.num_heads}")
        if table.shape[0] != cfg.rope_len:
            raise UserError(f"checkpoint {path} does not fit the config: its RoPE table has {table.shape[0]} positions "
                            f"(max_latent_tokens x max_latent_tokens_mult), the config gives {cfg.rope_len}")
        cos, sin = RotaryEmbedding(2 * table.shape[1], cfg.rope_len, cfg.rope_theta).build_table(cfg.rope_len)
        if not torch.allclose(torch.stack([cos, sin], -1), table.float(), atol=1e-4):
            raise UserError(f"checkpoint {path} does not fit the config: its RoPE table is not the one of rope_theta "
                            f"{cfg.rope_theta:g}")
        unverified.remove("num_heads")
        unverified.remove("rope_theta")
    mask = _cached(raw, _MASK_KEYS)
    if cfg.latent_mask == "block":
        if mask is None:
            unverified.append("token_grans")
        else:
            ours = token_block_mask(mask.shape[0], cfg.token_grans, beyond=cfg.beyond_grans)
            ours = torch.ones(mask.shape, dtype=torch.bool) if ours is None else ours
            if mask.dim() != 2 or not torch.equal(ours, mask.bool()):
                raise UserError(f"checkpoint {path} does not fit the config: its cached block mask ({mask.shape[0]} "
                                f"latents) is not the one of granularities {list(cfg.token_grans)} (mask_token_grans)")
            if mask.shape[0] == cfg.num_latents:
                unverified.remove("max_latent_tokens")
    return unverified


def load_reference(path: str | Path, config: Mapping[str, Any] | str | Path | None = None, section: str | None = None,
                   semantics: str | None = None) -> AdaPerceiver:
    """Build a model from a reference checkpoint and its constructor arguments.

    ``path`` is a weights file, or a hub model directory (``model.safetensors`` + ``config.json``),
    in which case ``config`` defaults to that ``config.json``. ``config`` is a dict or a JSON file of
    reference arguments (see :func:`config_from_reference`); ``section`` picks one entry of a JSON
    that describes several models (e.g. ``"dense"``); ``semantics`` overrides which reference model
    the checkpoint comes from (:func:`reference_semantics`). Shape-determined values (embed dim,
    depth, classes ...) are checked against the weights, and a file whose keys or shapes do not fit
    is refused with the offending keys named.
    """
    path = Path(path)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{path} has no model.safetensors (a hub model directory holds model.safetensors + config.json)")
        if config is None:
            config = path / "config.json"
            if not config.is_file():
                raise FileNotFoundError(f"{path} has no config.json (a hub model directory holds model.safetensors + config.json)")
        path = weights
    elif config is None:
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint file or hub model directory at {path}")
        raise ValueError(f"{path} is a weights file: give its reference constructor arguments (a JSON config) too")
    if not isinstance(config, Mapping):
        source = config
        try:
            config = json.loads(Path(source).read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{source} is not valid JSON ({e})") from None
        if not isinstance(config, Mapping):
            raise UserError(f"{source} must hold a JSON object of reference constructor arguments, "
                            f"not a {type(config).__name__}")
    raw = read_state_dict(path)
    state = convert_reference_state_dict(raw)
    if section is not None:
        if section not in config:
            sections = sorted(k for k, v in config.items() if isinstance(v, Mapping))
            raise ValueError(f"config has no section {section!r}; sections: {sections}")
        config = config[section]
    elif not any(k.endswith("Config") or k in _CONFIG_NAMES for k in config):
        task = "dense" if "query_proj.weight" in state else "classification"
        if isinstance(config.get(task), Mapping):  # a file describing both models, keyed by task
            config = config[task]
    cfg = config_from_reference(config, semantics=semantics)
    missing = [k for k in ("patch_embed.proj.weight", "patch_embed.pos_embed") if k not in state]
    if missing:
        raise UserError(f"{path} is not an AdaPerceiver reference checkpoint: after renaming it has no {missing} "
                        f"(its first keys: {sorted(state)[:3]})")
    shapes = infer_shapes(state)
    for k, v in shapes.items():
        if getattr(cfg, k) != v:
            raise ValueError(f"checkpoint {path} does not fit the config: weights say {k}={v!r}, config says {getattr(cfg, k)!r}")
    unverified = verify_reference(cfg, strip_wrappers(raw), state, path)
    if unverified:
        shown = ", ".join(f"{k}={_shown(cfg, k)}" for k in unverified)
        warnings.warn(UnverifiedConfigWarning(
            f"{path}: the weights cannot confirm {shown} (no cached RoPE table / block mask): taken from the config "
            f"as given; a wrong value gives wrong outputs"), stacklevel=2)
    model = build_model(cfg)
    load_strict(model, state, source=str(path))
    return model.eval()


def _shown(cfg: AdaPerceiverConfig, key: str) -> Any:
    value = {"max_latent_tokens": cfg.num_latents, "token_grans": list(cfg.token_grans)}.get(key)
    return getattr(cfg, key) if value is None else value


# --------------------------------------------------------------------------------------------------
# reference forward semantics
def _to_reference_layout(model: AdaPerceiver, out: Tensor) -> Tensor:
    if isinstance(model, AdaPerceiverClassifier):
        return out.unsqueeze(-2)  # (B, 1, classes)
    return out.flatten(-2).transpose(-1, -2)  # (B, h*w, C)


def _reference_width(model: AdaPerceiver, mat_dim: int | Sequence[int] | None):
    if mat_dim is None or (isinstance(mat_dim, int) and mat_dim == 0):
        return None
    d = model.cfg.embed_dim
    if isinstance(mat_dim, (list, tuple)):
        return [min(int(m), d) for m in mat_dim]
    return min(int(mat_dim), d)


def reference_forward(model: AdaPerceiver, x: Tensor, num_tokens: int | None = None,
                      mat_dim: int | Sequence[int] | None = None, depth: int | None = None,
                      token_loss: bool = False, layer_loss: bool = False, depth_tau: float | None = None,
                      rng: random.Random | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """The reference model's ``forward``: returns ``(outputs, intermediates)`` in its tensor layout.

    Quirks reproduced on purpose (see docs/reference.md): ``depth`` 0 or >= L means all blocks;
    ``layer_loss`` runs all blocks and writes block ``l`` out from its first ``t_l`` latents, with
    ``t_l`` = ``num_tokens`` (classifier, when given) or a draw from ``rng`` (default: Python's
    global ``random``; the dense reference model always draws); ``token_loss`` writes out each
    granularity but the last from its prefix, then the final output from all latents;
    ``depth_tau`` stops the whole batch after the first block whose *batch-mean* max softmax >= tau.
    """
    rng = rng or random  # type: ignore[assignment]
    x = model.check_input(x)
    n = model.resolve_tokens(num_tokens)
    width = _reference_width(model, mat_dim)
    hidden, sample_hidden = model.resolve_width(width, x.shape[0])
    d_run = model.num_blocks if (layer_loss or not depth or depth >= model.num_blocks) else model.resolve_depth(depth)
    patches, grid = model.patch_embed(x)
    z = model.read_latents(patches, n)
    grans = list(model.cfg.token_grans)

    def write(latents: Tensor, t: int | None = None) -> Tensor:
        if t is not None:
            latents = latents[:, :t]
        return _to_reference_layout(model, model.write_out(latents, patches, grid))

    intermediates: list[Tensor] = []
    for i in range(d_run):
        z, _ = model.run_blocks(z, i + 1, hidden, sample_hidden, start=i)
        if layer_loss:
            if isinstance(model, AdaPerceiverClassifier) and num_tokens is not None:
                t = num_tokens
            else:
                t = rng.choice(grans)
            intermediates.append(write(z, t))
        elif depth_tau is not None and isinstance(model, AdaPerceiverClassifier):
            conf = write(z).detach().softmax(-1).amax(-1).mean()
            if float(conf) >= depth_tau:
                break
    outputs = [write(z, g) for g in grans[:-1]] if token_loss else []
    outputs.append(write(z))
    return outputs, intermediates


# --------------------------------------------------------------------------------------------------
def token_count_rules(cfg: AdaPerceiverConfig) -> str:
    """One line on what token counts above the trained ones do under ``cfg``."""
    last = cfg.token_grans[-1]
    if cfg.rope_scaling == "ntk":
        rope = f"any token count, RoPE NTK-scaled above {cfg.rope_len}"
    else:
        rope = f"token counts up to {cfg.max_tokens}, RoPE never scaled"
    if cfg.latent_mask == "none":
        seen = "no granularity mask"
    elif cfg.beyond_grans == "all":
        seen = f"latents past {last} see all latents"
    else:
        seen = f"latents past {last} see the first {last}"
    source = "hub model" if (cfg.rope_scaling, cfg.beyond_grans) == ("ntk", "all") else "training code"
    return f"{source} rules: {rope}; {seen}"


__all__ = [
    "SEMANTICS", "config_from_reference", "convert_reference_state_dict", "infer_shapes", "load_reference",
    "reference_forward", "reference_semantics", "token_count_rules"
]
