"""TensorBoard event files, an optional mirror of what runs write as CSV (needs the ``tensorboard`` package).

Training mirrors every ``metrics.csv`` row (tags ``train/loss``, ``train/lr``, ``train/img_s``,
``val/acc1`` ...); a sweep adds each configuration's metric, GFLOPs and latency
(``sweep/t16_d3_w48/acc1`` ...) and its Pareto figure as an image (``sweep/pareto``).
``tensorboard --logdir runs`` shows them all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOGGERS = ("csv", "tensorboard")  # csv is always written; tensorboard adds event files
TENSORBOARD_DIR = "tensorboard"


def summary_writer() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError that says what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard logging needs the optional tensorboard package: "
                          "pip install 'adaperceiver[tensorboard]'") from None
    return SummaryWriter


class TensorBoardLog:
    """Scalars and images in ``log_dir``; events after ``purge_step`` left by an earlier (killed) run are
    dropped, so a resumed run does not show the redone steps twice."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        self.writer = summary_writer()(str(log_dir), purge_step=purge_step)

    def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """Every finite number of ``values`` as ``prefix + key`` at ``step`` (text and missing values are skipped)."""
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self.writer.add_scalar(prefix + key, float(value), step)
        self.writer.flush()

    def image(self, tag: str, png: str | Path, step: int) -> None:
        """A PNG file (e.g. a plot) as an image."""
        import numpy as np
        from PIL import Image

        with Image.open(png) as im:
            self.writer.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def log_row(log: TensorBoardLog, row: Mapping[str, Any]) -> None:
    """One ``metrics.csv`` row (``step``, ``split`` and numbers) as ``<split>/<key>`` scalars (``val_acc1`` -> ``val/acc1``)."""
    split = row.get("split", "train")
    values = {k.removeprefix(f"{split}_"): v for k, v in row.items() if k not in ("step", "split", "epoch")}
    log.scalars(values, int(row["step"]), prefix=f"{split}/")


def log_sweep(log_dir: str | Path, rows: Sequence[Mapping[str, Any]], pareto_png: str | Path | None = None,
              step: int = 0) -> None:
    """A sweep's rows (one tag group per configuration) and its Pareto figure, at ``step`` (e.g. the
    training step of the swept weights)."""
    log = TensorBoardLog(log_dir)
    try:
        for row in rows:
            name = f"t{row['tokens']}_d{row['depth']}_w{row['width']}"
            log.scalars({k: v for k, v in row.items() if k not in ("tokens", "depth", "width")}, step, f"sweep/{name}/")
        if pareto_png is not None and Path(pareto_png).is_file():
            log.image("sweep/pareto", pareto_png, step)
    finally:
        log.close()


__all__ = ["LOGGERS", "TENSORBOARD_DIR", "TensorBoardLog", "log_row", "log_sweep", "summary_writer"]
