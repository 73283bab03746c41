"""The files of a run directory that training reads back: ``metrics.csv``, the ``last.json`` pointer to
the newest checkpoint, and the saved :class:`TrainConfig`."""

from __future__ import annotations

import csv
import json
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

    def load(self, keep_until_step: int) -> None:
        """Read an existing file, dropping rows after ``keep_until_step`` (they will be redone)."""
        if not self.path.is_file():
            return
        try:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                self.rows = [r for r in reader if r.get("step") and int(r["step"]) <= keep_until_step]
        except (ValueError, csv.Error, UnicodeDecodeError) as e:
            raise UserError(f"{self.path} is damaged ({first_line(e)}); repair or delete it to resume "
                            f"(rows are rewritten from the checkpoint's step on)") from None
        if "step" not in self.fields:
            raise UserError(f"{self.path} is damaged (no 'step' column); repair or delete it to resume")
        self._purge_step = keep_until_step + 1  # events of steps that will be redone are dropped
        if self.enabled:
            self._rewrite()

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


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    pointer = Path(run_dir) / CHECKPOINT_DIR / LAST_POINTER
    if not pointer.is_file():
        return None
    try:
        path = Path(run_dir) / CHECKPOINT_DIR / json.loads(pointer.read_text())["dir"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{pointer} is damaged ({e}); point it at a checkpoints/step_* directory") from None
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(f"{pointer} points at {path}, which has no {STATE_NAME}")
    return path


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
