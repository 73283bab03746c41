"""Deployment budgets: the most accurate configuration that fits a latency or FLOPs budget here.

A sweep (``adaperceiver sweep``: rows with ``tokens, depth, width, acc1, gflops``) says how accurate
every configuration is; how fast it runs depends on the machine. :func:`select_configuration`
measures the latency of every configuration of the sweep on the current machine at the requested
batch size (model alone, ready inputs, median of repeats), caches the numbers in a JSON file next
to the sweep keyed by what a latency depends on (:func:`latency_key`: host, device and its chip,
dtype, compilation, batch size, torch version and threads, the model), and returns the most
accurate row within the budget. Latencies of one key never answer for another. Budgets are per call: ``max_ms`` is the median latency of one
batch of ``batch_size`` images (per image at batch size 1).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import tensors_digest, write_json
from ..errors import UserError
from ..evaluation.cost import device_name, machine_info, measure_latency
from ..models.adaperceiver import AdaPerceiver
from ..models.inference import InferenceModel
from ..models.protocol import check_adaptive
from ..models.setting import Setting

CACHE_NAME = "latency_cache.json"
Row = dict[str, Any]
MeasureFn = Callable[[AdaPerceiver, Setting, int], float]  # (model, setting, batch) -> ms


def load_rows(sweep: str | Path | Sequence[Mapping[str, Any]]) -> list[Row]:
    """Sweep rows from ``sweep.json`` (``{"rows": [...]}`` or a list), ``sweep.csv``, a directory holding
    either, or an in-memory list of dicts. Numbers in CSV cells are parsed."""
    if not isinstance(sweep, (str, Path)):
        rows = [dict(r) for r in sweep]
    else:
        path = Path(sweep)
        if path.is_dir():
            path = next((path / n for n in ("sweep.json", "sweep.csv") if (path / n).is_file()), path / "sweep.json")
        if not path.is_file():
            raise FileNotFoundError(f"no sweep file at {path} (expected sweep.json or sweep.csv)")
        if path.suffix == ".json":
            try:
                obj = json.loads(path.read_text())
                rows = obj["rows"] if isinstance(obj, dict) else obj
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path} is not a sweep file ({type(e).__name__}: {e}); write it with "
                                 f"adaperceiver.evaluation.run_sweep") from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError(f"{path} is not a sweep file (its rows are not a list of objects)")
        elif path.suffix == ".csv":
            with open(path, newline="") as f:
                rows = [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
        else:
            raise ValueError(f"sweep file must be .json or .csv, got {path.name}")
    missing = [k for k in Setting._fields if rows and k not in rows[0]]
    if not rows or missing:
        raise ValueError(f"sweep rows need tokens, depth and width (missing {missing})" if rows else "the sweep has no rows")
    for r in rows:
        for k in Setting._fields:
            r[k] = int(r[k])
    return rows


def _parse(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except (TypeError, ValueError):
            pass
    return {"True": True, "False": False}.get(v, v)


def latency_key(model: AdaPerceiver, batch_size: int) -> dict[str, str]:
    """What a latency of ``model`` depends on: host, device and the chip behind it, torch version and threads,
    dtype, compilation (eager, or a ``model.for_inference(...)`` copy: slim, slim compiled), batch size, model."""
    cfg_hash = hashlib.sha1(json.dumps(model.cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:10]
    p, m = next(model.parameters()), machine_info()
    compiled = ("slim compiled" if model.compiled else "slim") if isinstance(model, InferenceModel) else "eager"
    return {"host": m["node"], "machine": m["machine"], "torch": m["torch"], "threads": str(m["torch_threads"]),
            "device": str(p.device), "chip": device_name(p.device), "compile": compiled, "dtype": str(p.dtype),
            "batch": str(batch_size), "model": cfg_hash}


def machine_key(model: AdaPerceiver, batch_size: int) -> str:
    """:func:`latency_key` as the cache's string key (``host X|...|dtype torch.float32|batch 1|model H``)."""
    return "|".join(f"{k} {v}" for k, v in latency_key(model, batch_size).items())


def _fields(key: str) -> dict[str, str]:
    return dict(part.partition(" ")[::2] for part in key.split("|"))


def _refusal(cache_path: str | Path | None, key: str, cache: Mapping[str, Any], missing: Sequence[str]) -> UserError:
    """Why the cache cannot answer for ``key``: the fields in which its nearest entry differs."""
    want = _fields(key)
    if key in cache:
        return UserError(f"latency cache {cache_path} has no latencies for tokens/depth/width {', '.join(missing[:4])} "
                         f"under this key ({', '.join(f'{k} {v}' for k, v in want.items())}); measure them first")
    if not cache:
        return UserError(f"latency cache {cache_path} is empty or missing; measure the latencies first")
    near = max(cache, key=lambda k: sum(_fields(k).get(f) == v for f, v in want.items()))
    have = _fields(near)
    diff = [f for f in want if have.get(f) != want[f]]
    return UserError(f"latency cache {cache_path} was measured for " + ", ".join(f"{f} {have.get(f, '?')}" for f in diff)
                     + "; this model asks for " + ", ".join(f"{f} {want[f]}" for f in diff)
                     + ": latencies do not carry across devices, dtypes, compilation, batch sizes or torch versions; "
                       "measure them here first")


def default_measure(model: AdaPerceiver, setting: Setting, batch_size: int) -> float:
    """Median ms of one ``model(x, *setting)`` call on a ready random batch."""
    return measure_latency(model, setting, batch_size).median_ms


def measure_configurations(model: AdaPerceiver, configs: Sequence[Setting], batch_size: int = 1,
                           cache_path: str | Path | None = None, measure: MeasureFn | None = None, *,
                           measure_missing: bool = True) -> dict[str, float]:
    """Latency (median ms per call) of each setting, reusing and updating the cache (keyed ``t/d/w``).

    Only latencies recorded under this :func:`latency_key` are reused. With ``measure_missing=False``
    nothing is timed: a cache without every latency under this key is refused, naming the fields in
    which it differs (e.g. measured on a CPU, asked for a GPU)."""
    measure = measure or default_measure
    key = machine_key(model, batch_size)
    cache: dict[str, dict[str, float]] = {}
    if cache_path is not None and Path(cache_path).is_file():
        try:
            cache = json.loads(Path(cache_path).read_text())
        except json.JSONDecodeError:
            cache = {}  # a damaged cache is re-measured, not fatal
    todo = [Setting.of(c) for c in configs if setting_key(c) not in cache.get(key, {})]
    if todo and not measure_missing:
        raise _refusal(cache_path, key, cache, [setting_key(c) for c in todo])
    entry = cache.setdefault(key, {})
    for c in todo:
        entry[setting_key(c)] = float(measure(model, c, batch_size))
    if todo and cache_path is not None:
        write_json(cache_path, cache)
    return {setting_key(c): entry[setting_key(c)] for c in configs}


def setting_key(setting: Sequence[int]) -> str:
    """The cache's name of a setting: its axis values joined by ``/`` (``16/3/48``)."""
    return "/".join(str(v) for v in setting)


def check_sweep_model(sweep: str | Path, model: AdaPerceiver) -> None:
    """Refuse a sweep.json recorded for other weights than ``model``'s (its accuracies would not be this model's)."""
    path = Path(sweep)
    path = path / "sweep.json" if path.is_dir() else path
    if path.suffix != ".json" or not path.is_file():
        return  # a CSV carries no record of its model
    meta = json.loads(path.read_text())
    recorded = meta.get("model_sha256") if isinstance(meta, dict) else None
    if recorded is not None and recorded != tensors_digest(model.state_dict()):
        raise ValueError(f"{path} was measured on other weights (sha256 {recorded[:12]}...) than this model "
                         f"({tensors_digest(model.state_dict())[:12]}...); sweep this model first")


def select_configuration(sweep: str | Path | Sequence[Mapping[str, Any]], model: AdaPerceiver,
                         max_ms: float | None = None, max_gflops: float | None = None, batch_size: int = 1, *,
                         metric: str = "acc1", higher_is_better: bool = True, cache_path: str | Path | None = None,
                         measure: MeasureFn | None = None, measure_missing: bool = True) -> Row:
    """The most accurate sweep row whose latency here is <= ``max_ms`` and GFLOPs <= ``max_gflops``.

    Latencies are measured only when ``max_ms`` is given, for every configuration of the sweep, and
    cached (default: ``latency_cache.json`` next to a sweep file; no cache for in-memory rows; with
    ``measure_missing=False`` only the cache answers, see :func:`measure_configurations`). The
    returned row gains ``latency_ms`` (measured here) and ``batch_size``. Ties go to fewer GFLOPs.
    Raises ValueError naming the cheapest configuration when nothing fits.
    """
    check_adaptive(model, "a budget")
    if max_ms is None and max_gflops is None:
        raise ValueError("give a budget: max_ms and/or max_gflops")
    if (max_ms is not None and max_ms <= 0) or (max_gflops is not None and max_gflops <= 0):
        raise ValueError(f"budgets must be positive, got max_ms={max_ms}, max_gflops={max_gflops}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = load_rows(sweep)
    if isinstance(sweep, (str, Path)):
        check_sweep_model(sweep, model)
    if metric not in rows[0]:
        raise ValueError(f"sweep rows have no {metric!r} column; columns: {sorted(rows[0])}")
    if max_gflops is not None and "gflops" not in rows[0]:
        raise ValueError("max_gflops needs a 'gflops' column in the sweep")
    for r in rows:  # rows must be settings of this model (clear errors, not tensor-size errors)
        model.resolve_configuration(*Setting.of(r))
    if cache_path is None and isinstance(sweep, (str, Path)):
        p = Path(sweep)
        cache_path = (p if p.is_dir() else p.parent) / CACHE_NAME
    if max_ms is not None:
        lat = measure_configurations(model, [Setting.of(r) for r in rows], batch_size,
                                     cache_path, measure, measure_missing=measure_missing)
        for r in rows:
            r["latency_ms"] = lat[setting_key(Setting.of(r))]
            r["batch_size"] = batch_size

    def fits(r: Row) -> bool:
        return (max_ms is None or r["latency_ms"] <= max_ms) and (max_gflops is None or r["gflops"] <= max_gflops)

    ok = [r for r in rows if fits(r)]
    if not ok:
        cost_key = "latency_ms" if max_ms is not None else "gflops"
        cheapest = min(rows, key=lambda r: r[cost_key])
        budget = " and ".join(s for s in (f"max_ms={max_ms:g} (batch size {batch_size})" if max_ms is not None else "",
                                            f"max_gflops={max_gflops:g}" if max_gflops is not None else "") if s)
        raise ValueError(f"no configuration fits {budget}; the cheapest is tokens/depth/width "
                         f"{setting_key(Setting.of(cheapest))} with "
                         + ", ".join(f"{k}={cheapest[k]:.4g}" for k in ("latency_ms", "gflops", metric) if k in cheapest))
    sign = 1.0 if higher_is_better else -1.0
    return max(ok, key=lambda r: (sign * float(r[metric]), -float(r.get("gflops", 0.0))))


__all__ = ["CACHE_NAME", "latency_key", "load_rows", "machine_key", "measure_configurations", "select_configuration",
           "setting_key"]
