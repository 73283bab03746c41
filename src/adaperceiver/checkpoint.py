"""Saving and loading models: safetensors weights + a JSON config, written atomically.

A pretrained directory holds ``model.safetensors`` and ``config.json``; :func:`from_pretrained`
rebuilds the model from it. Every weight loader lives here: :func:`read_state_dict` (safetensors or
torch pickle), :func:`load_strict` (readable refusal of a mismatch), :func:`load_matching` (copy what
fits) and :func:`strip_wrappers` (``module.`` / ``_orig_mod.`` prefixes). Training state (optimizer,
EMA, step) lives in the training package.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import UserError, first_line
from .models import cnn, heads, vit
from .models.adaperceiver import AdaPerceiver, AdaPerceiverConfig, build_model

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# wrapper prefixes of saved state dicts: DDP, torch.compile, and checkpoints holding {"model.": ...}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

# Task models that ``build_model(cfg)`` cannot rebuild (a backbone plus a head) add
# ``"architecture": name`` to config.json through a ``checkpoint_meta()`` method; the function named
# here rebuilds them with ``build_architecture(name, cfg, meta)``.
ARCHITECTURES = {
    "segmentation": heads.build_architecture,
    "depth": heads.build_architecture,
    "static_vit": vit.build_architecture,
    "static_cnn": cnn.build_architecture,
}
# architectures whose "model" section is not an AdaPerceiverConfig (they get cfg=None)
FOREIGN_CONFIG_ARCHITECTURES = {"static_vit", "static_cnn"}


TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"
DIGEST_KEY = "adaperceiver.sha256"  # safetensors metadata: sha256 of the tensors, recorded when written


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result over ``path`` only once it is complete.

    The temporary file is created with mode 0666 minus the umask (like a plain ``open``), lives
    next to ``path`` as ``.NAME.XXXXXXXX.tmp`` and is removed when anything fails (a kill leaves
    it behind; :func:`remove_temporaries` clears those). A failed write (disk full ...) raises
    :class:`UserError` naming ``path``; the old file is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot write {path}: a parent of it is a file, not a directory") from None
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            mode = tmp.stat().st_mode & 0o777  # 0666 minus the umask
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot write {path}: {first_line(e)}") from None
    try:
        write(str(tmp))
        if tmp.stat().st_mode & 0o777 != mode:  # writers that recreate the file (safetensors) use 0600
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot write {path}: {first_line(e)}; the previous version (if any) is kept") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temporaries(directory: str | Path, recursive: bool = False) -> list[Path]:
    """Delete the ``.NAME.XXXXXXXX.tmp`` files an interrupted :func:`atomic_write` left in ``directory``.

    Only safe while no one else writes there (hold :func:`run_lock`).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = directory.rglob(f".*{TEMP_SUFFIX}") if recursive else directory.glob(f".*{TEMP_SUFFIX}")
    gone = [p for p in found if p.is_file() and re.fullmatch(r"\..+\.[0-9A-Za-z_]+\.tmp", p.name)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


_LOCKS: dict[Path, list] = {}  # directory -> [file descriptor, nesting count] for locks this process holds


class RunLock:
    """An exclusive lock on a directory for one writing process: ``with run_lock(run_dir): ...``.

    ``flock`` on ``DIR/.lock``, so the kernel releases it when the holder exits or is killed: a
    stale lock cannot outlive its process. The file records the holder (pid, host, start time),
    which a refused second writer names. Re-entrant within one process.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def acquire(self) -> "RunLock":
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"cannot write {self.directory}: it or a parent of it is a file, not a directory") from None
        key = self.directory.resolve()
        if key in _LOCKS:
            _LOCKS[key][1] += 1
            return self
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(path.read_text())
                who = f"pid {holder['pid']} on host {holder['host']}, since {holder.get('since', '?')}"
            except (OSError, ValueError, KeyError, TypeError):
                who = "another process"
            os.close(fd)
            raise UserError(f"{self.directory} is being written by another run ({who}); wait for it to finish, "
                            f"or stop it, or write elsewhere") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        _LOCKS[key] = [fd, 1]
        return self

    def release(self) -> None:
        key = self.directory.resolve()
        entry = _LOCKS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _LOCKS[key]
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(directory: str | Path) -> RunLock:
    return RunLock(directory)


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    def _write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")

    atomic_write(path, _write)


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


def load_matching(model: nn.Module, directory: str | Path, required: Sequence[str] = (),
                  min_fraction: float = 0.5) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``directory/model.safetensors`` whose name and shape match ``model``.

    Returns ``(loaded, skipped)`` key lists; used to start a run from a trained model (all but a new
    head usually match). Refused, with the counts, when fewer than ``min_fraction`` of the model's
    tensors match or any of ``required`` (e.g. a backbone that will stay frozen) does not.
    """
    source = Path(directory) / WEIGHTS_NAME
    state = read_state_dict(source)
    own = model.state_dict()
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    skipped = sorted(set(own) - set(loaded))
    missing = [k for k in required if k not in loaded]
    if missing or len(loaded) < min_fraction * len(own):
        why = (f"{len(missing)} of the {len(required)} tensors that must load do not, e.g. {missing[:3]}" if missing
               else f"fewer than {min_fraction:.0%} fit")
        raise UserError(f"{source} does not fit this model: {len(loaded)} of {len(own)} tensors match by name and "
                        f"shape ({why}; not loaded: {skipped[:4]}{' ...' if len(skipped) > 4 else ''}); was it "
                        f"trained with another model config?")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded, skipped


def save_pretrained(model: AdaPerceiver, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (plus ``extra`` metadata) into ``directory``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"cannot save a model into {directory}: it is a file, not a directory")
    save_state_dict(directory / WEIGHTS_NAME, model.state_dict(), metadata={"format": "pt"})
    task_meta = model.checkpoint_meta() if hasattr(model, "checkpoint_meta") else {}
    write_json(directory / CONFIG_NAME, {"model": model.cfg.to_dict(), **task_meta, **(extra or {})})
    return directory


def load_meta(directory: str | Path) -> dict[str, Any]:
    """The whole config.json of a saved model (``"model"`` config plus any extra entries)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; is it a directory written by save_pretrained?")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a valid adaperceiver config ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ValueError(f"{path} is not a valid adaperceiver config (no 'model' section)")
    return meta


def load_config(directory: str | Path) -> AdaPerceiverConfig:
    meta = load_meta(directory)
    try:
        return AdaPerceiverConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{Path(directory) / CONFIG_NAME} is not a valid adaperceiver config ({e})") from None


def build_from_meta(cfg: AdaPerceiverConfig | None, meta: dict[str, Any]) -> torch.nn.Module:
    """``build_model(cfg)``, or the task model named by ``meta["architecture"]``."""
    arch = meta.get("architecture")
    if arch is None:
        return build_model(cfg)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} in config.json; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](arch, cfg, meta)


def from_pretrained(directory: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> AdaPerceiver:
    """Rebuild a model saved by :func:`save_pretrained` (or a training run directory) for inference.

    ``verify=False`` skips the sha256 check of the weights (for a file edited by hand on purpose).
    """
    meta = load_meta(directory)
    cfg = None if meta.get("architecture") in FOREIGN_CONFIG_ARCHITECTURES else load_config(directory)
    model = build_from_meta(cfg, meta)
    weights = Path(directory) / WEIGHTS_NAME
    load_strict(model, read_state_dict(weights, verify=verify), source=str(weights))
    return model.to(map_location).eval()
