"""A dataset read the way a trained model needs it, or a one-line refusal naming both sides.

Every evaluation path (sweep, policy, budget, dense visualisation) loads its data through
:func:`load_for_model`: an image folder is prepared with the model's data config; a built-in set is
built at the model's size and its own preparation (channels, mean / std, class names) compared with
the model's. A contradiction raises :class:`UserError` naming the dataset's value and the model's;
``allow_mismatch=True`` goes ahead and says so in the returned notes (for the rare intended case,
e.g. a folder whose class folders are named differently but in the model's order).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from ..errors import UserError
from ..models.data_config import DataConfig, describe
from . import canonical_name, get_dataset
from .folder import describe_conversion


class DataMismatchError(UserError):
    """The data contradicts the model's data config (size, channels, normalisation, class names)."""


def _names(names) -> str:
    names = list(names)
    return str(names if len(names) <= 12 else names[:12] + [f"... {len(names)} in all"])


def check_classes(dataset_classes, model: DataConfig, num_classes: int | None, where: str) -> str | None:
    """Why ``dataset_classes`` cannot be scored by a model with these classes, or None."""
    classes = tuple(dataset_classes)
    if model.class_names is not None and classes != model.class_names:
        order = " (the same names in another order)" if set(classes) == set(model.class_names) else ""
        return f"{where} has classes {_names(classes)} but the model was trained on {_names(model.class_names)}{order}"
    if num_classes is not None and len(classes) > num_classes:
        return f"{where} has {len(classes)} classes but the model has {num_classes} outputs"
    return None


def load_for_model(spec: str, split: str, model: DataConfig, *, num_classes: int | None = None,
                   allow_mismatch: bool = False, on_corrupt: str = "fail") -> tuple[Dataset, list[str]]:
    """Dataset ``spec`` (``NAME`` or ``NAME:ROOT``) prepared for a model with data config ``model``.

    Returns the dataset and the lines worth telling the user (conversions made, mismatches allowed).
    """
    name, _, root = spec.partition(":")
    key = canonical_name(name)
    notes: list[str] = []
    if key == "imagefolder":
        ds = get_dataset(name, split, root=root or None, data_config=model, on_corrupt=on_corrupt)
        where = f"image folder {Path(root)}"
        problem = check_classes(ds.classes, model, num_classes, where)
        conversion = describe_conversion(ds)
        if conversion:
            notes.append(conversion)
    else:
        size = model.input_size if model.crop_mode == "squash" else None
        ds = get_dataset(name, split, root=root or None, image_size=size)
        own: DataConfig | None = getattr(ds, "data_config", None)
        if own is None:  # dense sets have no data config: their own checks apply
            return ds, notes
        where = f"dataset {name!r}"
        problem = None
        if (own.in_chans, own.input_size) != (model.in_chans, model.input_size) or not _close(own.mean, model.mean) \
                or not _close(own.std, model.std):
            problem = f"{where} gives images prepared as {describe(own)}; the model expects {describe(model)}"
        else:
            problem = check_classes(own.class_names or ds.classes, model, num_classes, where)
    if problem:
        if not allow_mismatch:
            raise DataMismatchError(problem)
        notes.append(f"mismatch allowed: {problem}")
    return ds, notes


def _close(a, b, tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


__all__ = ["DataMismatchError", "check_classes", "load_for_model"]
