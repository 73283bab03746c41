"""Weight files: safetensors (with a recorded sha256) or torch pickles in, a model's state dict out.

Every weight loader lives here: :func:`read_state_dict` (safetensors or torch pickle), :func:`load_strict`
(readable refusal of a mismatch) and :func:`strip_wrappers` (``module.`` / ``_orig_mod.`` prefixes).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import UserError, first_line
from .files import atomic_write

DIGEST_KEY = "adaperceiver.sha256"  # safetensors metadata: sha256 of the tensors, recorded when written
# wrapper prefixes of saved state dicts: DDP, torch.compile, and checkpoints holding {"model.": ...}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_state_dict(path: str | Path, state: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``state`` as safetensors (atomically), recording the sha256 of its tensors in the header."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {**(metadata or {}), DIGEST_KEY: tensors_digest(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_state_dict(path: str | Path, verify: bool = True) -> dict[str, Tensor]:
    """Read a safetensors file or a torch pickle (``weights_only``), refusing corrupt files clearly.

    A safetensors file written here carries the sha256 of its tensors; with ``verify`` (default) a
    file whose tensors no longer match it (bit rot, a hand edit) is refused. Tensors holding NaN or
    inf are refused either way. A torch pickle holding ``{"state_dict": ...}`` or ``{"model": ...}``
    is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt") as f:
                recorded = (f.metadata() or {}).get(DIGEST_KEY)
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path} is not a readable safetensors file ({first_line(e)})") from None
        if verify and recorded is not None and tensors_digest(state) != recorded:
            raise UserError(f"{path}: the tensors do not match the sha256 recorded when the file was written "
                            f"(damaged on disk, or edited by hand); to load an edited file anyway pass verify=False")
        return _check_finite(state, path)
    try:
        with warnings.catch_warnings():  # a damaged file's unpickling warnings would only add noise to the error
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign pickle
        raise UserError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {first_line(e)})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return _check_finite(obj, path)


def _check_finite(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{path}: tensor {bad[0]} holds NaN or inf values ({len(bad)} of {len(state)} tensors do); "
                        f"these weights are unusable")
    return state


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix`` (e.g. ``"backbone."``) with the prefix removed; the state itself
    when no key has it."""
    if not any(k.startswith(prefix) for k in state):
        return dict(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop ``module.`` (DDP), ``_orig_mod.`` (torch.compile) and ``model.`` prefixes."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_strict(model: torch.nn.Module, state: Mapping[str, Tensor], source: str = "state dict") -> None:
    """``load_state_dict`` with a readable refusal for missing, unexpected or mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shape:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shape[:8]))
        raise ValueError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)


__all__ = [
    "DIGEST_KEY", "load_strict", "read_state_dict", "save_state_dict", "strip_prefix", "strip_wrappers",
    "tensors_digest"
]
