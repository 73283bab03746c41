"""Errors while reading one dataset item, in the main process or in a DataLoader worker.

A DataLoader worker that fails re-raises in the main process with the worker's whole traceback
folded into the message. :class:`ItemErrors` wraps a dataset so that a failing item raises one
line naming the split, the item index and the cause (its file, for the datasets that read files),
and logs the full traceback (logger ``adaperceiver.data``, level DEBUG); :func:`worker_error_line`
recovers that one line from the re-raised error.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

from torch.utils.data import Dataset

from ..errors import UserError, first_line

log = logging.getLogger("adaperceiver.data")


class ItemErrors(Dataset):
    """``dataset`` whose item errors become one line: ``train item 17: cannot read image a/5.png: ...``."""

    def __init__(self, dataset: Dataset, split: str):
        self.dataset, self.split = dataset, split

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        try:
            return self.dataset[i]
        except Exception as e:  # any error of a user's dataset: name the item, keep the traceback in the log
            log.debug("%s item %s failed:\n%s", self.split, i, traceback.format_exc())
            raise UserError(f"{self.split} item {i}: {first_line(e) or type(e).__name__}") from e

    def __getattr__(self, name: str) -> Any:  # classes, meta ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process (\d+)\.")


def worker_error_line(error: BaseException) -> str | None:
    """The original message of an error a DataLoader worker raised (its traceback's last line), or None."""
    text = str(error).strip()
    m = _WORKER.match(text)
    if m is None:
        return None
    last = text.splitlines()[-1].strip()
    last = re.sub(r"^[\w.]*(Error|Exception|Interrupt)\w*:\s*", "", last)
    return f"{last} (in DataLoader worker {m.group(2)})"


__all__ = ["ItemErrors", "worker_error_line"]
