"""The files of a run directory that training reads back: ``metrics.csv``, the ``last.json`` pointer to
the newest checkpoint, and the saved :class:`TrainConfig`."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from ..checkpoint import CONFIG_NAME, atomic_write
from ..errors import UserError, first_line
from ..evaluation.tensorboard import TENSORBOARD_DIR, TensorBoardLog, log_row, summary_writer
from ..models.config import drop_removed_fields
from ..models.presets import migrate_run_preset
from .config import TrainConfig
from .objective import REMOVED_OBJECTIVE_FIELDS

CHECKPOINT_DIR = "checkpoints"
LAST_POINTER = "last.json"
STATE_NAME = "trainer_state.pt"
METRICS_NAME = "metrics.csv"


class MetricsLog:
    """``metrics.csv`` with a header that grows when new keys appear (the file is then rewritten), and
    with ``tensorboard`` the same rows as TensorBoard events in ``tensorboard/`` beside it. A context
    manager: leaving it closes the event files."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = False):
        self.path, self.enabled = path, enabled
        self.rows: list[dict[str, Any]] = []
        self.fields: list[str] = []
        self.tensorboard_dir = path.parent / TENSORBOARD_DIR if enabled and tensorboard else None
        self._tb: TensorBoardLog | None = None
        self._purge_step: int | None = None
        if self.tensorboard_dir is not None:
            summary_writer()  # a missing package fails here, before any training

    def load(self, keep_until_step: int) -> int:
        """Read an existing file, dropping rows after ``keep_until_step`` (they will be redone); returns
        how many rows were dropped, for the caller to say so."""
        if not self.path.is_file():
            return 0
        try:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                rows = [r for r in reader if r.get("step")]
                self.rows = [r for r in rows if int(r["step"]) <= keep_until_step]
        except (ValueError, csv.Error, UnicodeDecodeError) as e:
            raise UserError(f"{self.path} is damaged ({first_line(e)}); repair or delete it to resume "
                            f"(rows are rewritten from the checkpoint's step on)") from None
        if "step" not in self.fields:
            raise UserError(f"{self.path} is damaged (no 'step' column); repair or delete it to resume")
        self._purge_step = keep_until_step + 1  # events of steps that will be redone are dropped
        if self.enabled:
            self._rewrite()
        return len(rows) - len(self.rows)

    def _rewrite(self) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.path, write)

    def append(self, row: dict[str, Any]) -> None:
        if self.tensorboard_dir is not None:
            if self._tb is None:
                self._tb = TensorBoardLog(self.tensorboard_dir, purge_step=self._purge_step)
            log_row(self._tb, row)
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        if not self.enabled:
            return
        new = [k for k in row if k not in self.fields]
        if new or not self.path.is_file():
            self.fields += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "objective.safetensors", STATE_NAME)  # what a checkpoint holds
_STEP_DIR = re.compile(r"^step_\d{8}$")


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def checkpoint_root(run_dir: str | Path) -> Path:
    """``run_dir/checkpoints``, refused when it resolves (through a symlink) outside ``run_dir``."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINT_DIR
    if root.exists() and not _inside(root.resolve(), run_dir.resolve()):
        raise UserError(f"{root} leads to {root.resolve()}, outside the run directory {run_dir}: a run reads and "
                        f"writes only its own checkpoints; replace the link with a real folder or use another name")
    return root


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None.

    The pointer must lead (symlinks resolved) to a ``checkpoints/step_*`` folder of this run directory:
    a run never resumes from another run's state (a copied or hand-edited directory).
    """
    root = checkpoint_root(run_dir)
    pointer = root / LAST_POINTER
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["dir"]
    except (json.JSONDecodeError, KeyError, TypeError, OSError) as e:
        raise UserError(f"{pointer} is damaged ({first_line(e)}); point it at a checkpoints/step_* directory") from None
    if not isinstance(name, str) or not name:
        raise UserError(f"{pointer} is damaged (its 'dir' is {name!r}, not a folder name); point it at a "
                        f"checkpoints/step_* directory")
    path = root / name
    real = path.resolve()
    if not _inside(real, root.resolve()) or real == root.resolve():
        raise UserError(f"{pointer} points at {path} ({real}), outside this run's checkpoints folder {root}: a run "
                        f"resumes only from its own checkpoints; point it at one of its checkpoints/step_* or start a "
                        f"new run")
    if not (path / STATE_NAME).is_file():
        raise UserError(f"{pointer} points at {path}, which has no {STATE_NAME}; point it at a complete "
                        f"checkpoints/step_* directory")
    return path


def remove_checkpoint(path: Path, run_dir: str | Path) -> None:
    """Delete the files a checkpoint writes in ``path`` (then the folder, if that leaves it empty).

    Only a real ``checkpoints/step_XXXXXXXX`` folder of ``run_dir`` is touched, and in it only the
    checkpoint's own file names: whatever else is there (a user's notes, a link) stays.
    """
    root = checkpoint_root(run_dir).resolve()
    if path.is_symlink() or not path.is_dir() or path.resolve().parent != root or not _STEP_DIR.match(path.name):
        return
    for name in CHECKPOINT_FILES:
        f = path / name
        if f.is_file() and not f.is_symlink():
            f.unlink()
    try:
        path.rmdir()
    except OSError:
        pass  # not empty: it holds files this run did not write


def fresh_checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """``checkpoints/step_XXXXXXXX`` of ``step``, emptied of a stale checkpoint of that step (a resume
    from an earlier step); refused when a link or a file that this run did not write is in the way."""
    path = checkpoint_root(run_dir) / f"step_{step:08d}"
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UserError(f"{path} is in the way of this run's checkpoint (a link or a file it did not write); move it away")
    remove_checkpoint(path, run_dir)
    return path


def rotate_checkpoints(run_dir: str | Path, keep: Path, count: int) -> None:
    """Remove this run's oldest checkpoints so that ``count`` are left, ``keep`` (the newest) among
    them; only real ``step_XXXXXXXX`` folders count, and only their checkpoint files are deleted."""
    root = checkpoint_root(run_dir)
    old = sorted(p for p in root.glob("step_*") if _STEP_DIR.match(p.name) and p.is_dir() and not p.is_symlink()
                 and p != keep)
    for p in old[: max(0, len(old) - (count - 1))]:
        remove_checkpoint(p, run_dir)


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` saved in a run directory's config.json."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {CONFIG_NAME}: not a training run directory")
    meta = read_run_json(path)
    if "train" not in meta:
        raise UserError(f"{path} has no 'train' section: it was not written by adaperceiver train")
    try:
        return TrainConfig.from_dict(migrate_train_section(meta))
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: its 'train' section is not a valid train config ({first_line(e)})") from None


def migrate_train_section(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``train`` section of a saved config.json as this version reads it: a renamed preset moved to
    the one that builds what the run trained, objective fields removed since (at their defaults) dropped."""
    train = migrate_run_preset(dict(meta.get("train", {})), meta.get("model"))
    if isinstance(train.get("objective"), dict):
        train["objective"] = drop_removed_fields(train["objective"], REMOVED_OBJECTIVE_FIELDS, "objective config")
    return train


def read_run_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a :class:`UserError` naming the file."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return obj


__all__ = [
    "CHECKPOINT_DIR", "LAST_POINTER", "METRICS_NAME", "MetricsLog", "STATE_NAME", "last_checkpoint",
    "load_run_config", "read_run_json"
]
