"""Budget selection: the most accurate sweep row within a latency / FLOPs budget, with a latency cache."""

from __future__ import annotations

import json

import pytest
import torch

from adaperceiver import build_model, save_pretrained
from adaperceiver.adapt.budget import CACHE_NAME, load_rows, machine_key, select_configuration
from adaperceiver.cli import main

# a made-up sweep over a tiny model: accuracy and cost grow with every axis
ROWS = [
    {"tokens": t, "depth": d, "width": w, "acc1": 50.0 + t + 5 * d + w / 8, "gflops": 0.001 * t * d * w / 16}
    for t in (4, 8, 16) for d in (1, 2, 3) for w in (16, 32)
]


def fake_latency(calls):
    def measure(model, setting, b):
        t, d, w = setting
        calls.append((t, d, w, b))
        return 0.1 * t * d * (w / 16) * b  # ms: grows with every axis and the batch size
    return measure


@pytest.fixture(scope="module")
def model(tiny_config):
    return build_model(tiny_config()).eval()


def test_best_row_under_gflops_budget(model):
    row = select_configuration(ROWS, model, max_gflops=0.012)
    ok = [r for r in ROWS if r["gflops"] <= 0.012]
    assert row["acc1"] == max(r["acc1"] for r in ok) and row["gflops"] <= 0.012
    assert "latency_ms" not in row  # nothing measured for a FLOPs budget


def test_best_row_under_latency_budget_and_cache(model, tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"metric": "acc1", "rows": ROWS}))
    calls = []
    row = select_configuration(path, model, max_ms=1.0, measure=fake_latency(calls))
    lat = {(r["tokens"], r["depth"], r["width"]): 0.1 * r["tokens"] * r["depth"] * r["width"] / 16 for r in ROWS}
    best = max((r for r in ROWS if lat[(r["tokens"], r["depth"], r["width"])] <= 1.0), key=lambda r: r["acc1"])
    assert (row["tokens"], row["depth"], row["width"]) == (best["tokens"], best["depth"], best["width"])
    assert row["latency_ms"] <= 1.0 and row["batch_size"] == 1
    assert len(calls) == len(ROWS)  # every configuration measured once
    cache = json.loads((tmp_path / CACHE_NAME).read_text())
    assert machine_key(model, 1) in cache
    select_configuration(path, model, max_ms=2.0, measure=fake_latency(calls))
    assert len(calls) == len(ROWS)  # second call: all from the cache
    row4 = select_configuration(path, model, max_ms=2.0, batch_size=4, measure=fake_latency(calls))
    assert len(calls) == 2 * len(ROWS) and machine_key(model, 4) in json.loads((tmp_path / CACHE_NAME).read_text())
    assert row4["latency_ms"] <= 2.0 and row4["acc1"] < row["acc1"] + 20
    both = select_configuration(path, model, max_ms=10.0, max_gflops=0.004, measure=fake_latency(calls))
    assert both["gflops"] <= 0.004


def test_csv_sweep(model, tmp_path):
    lines = ["tokens,depth,width,acc1,gflops"] + [f"{r['tokens']},{r['depth']},{r['width']},{r['acc1']},{r['gflops']}"
                                                   for r in ROWS]
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    rows = load_rows(tmp_path)  # a directory works too
    assert rows[0]["tokens"] == 4 and isinstance(rows[0]["acc1"], float)
    assert select_configuration(tmp_path / "sweep.csv", model, max_gflops=1.0)["acc1"] == max(r["acc1"] for r in ROWS)


def test_nothing_fits_names_the_cheapest(model):
    calls = []
    with pytest.raises(ValueError, match=r"no configuration fits max_ms=0.01 .*cheapest is tokens/depth/width 4/1/16"):
        select_configuration(ROWS, model, max_ms=0.01, measure=fake_latency(calls))
    with pytest.raises(ValueError, match=r"max_gflops=1e-06; the cheapest is tokens/depth/width 4/1/16 .*gflops=0.004"):
        select_configuration(ROWS, model, max_gflops=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "give a budget"),
    (dict(max_ms=-1.0), "budgets must be positive"),
    (dict(max_gflops=1.0, batch_size=0), "batch_size must be >= 1"),
    (dict(max_gflops=1.0, metric="miou"), "no 'miou' column"),
])
def test_bad_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_configuration(ROWS, model, **kwargs)


def test_rows_of_another_model_are_refused(model):
    with pytest.raises(ValueError, match=r"depth must be an int in \[1, 3\]"):
        select_configuration([{"tokens": 8, "depth": 7, "width": 16, "acc1": 1.0, "gflops": 1.0}], model, max_gflops=2.0)
    with pytest.raises(FileNotFoundError, match="no sweep file"):
        select_configuration("/nonexistent/sweep.json", model, max_gflops=2.0)


def test_budget_cli_uses_the_cache(model, tmp_path, capsys):
    save_pretrained(model, tmp_path / "run")
    (tmp_path / "sweep.json").write_text(json.dumps({"rows": ROWS}))
    # pre-filled cache: the CLI must read it instead of timing anything
    lat = {f"{r['tokens']}/{r['depth']}/{r['width']}": 0.1 * r["tokens"] * r["depth"] * r["width"] / 16 for r in ROWS}
    (tmp_path / CACHE_NAME).write_text(json.dumps({machine_key(model, 1): lat}))
    assert main(["budget", "--sweep", str(tmp_path / "sweep.json"), "--model", str(tmp_path / "run"), "--max-ms", "1"]) == 0
    out = capsys.readouterr().out
    assert "tokens=" in out and "latency_ms=" in out
    fast = model.for_inference(torch.bfloat16)  # the fast model's latencies live under their own key
    assert machine_key(fast, 1) != machine_key(model, 1) and "bfloat16|batch 1" in machine_key(fast, 1)
    assert machine_key(model.for_inference(torch.bfloat16, compile=True), 1) != machine_key(fast, 1)
    (tmp_path / CACHE_NAME).write_text(json.dumps({machine_key(model, 1): lat, machine_key(fast, 1): lat}))
    assert main(["budget", "--sweep", str(tmp_path / "sweep.json"), "--model", str(tmp_path / "run"), "--max-ms", "1",
                 "--dtype", "bfloat16"]) == 0
    assert "latency_ms=" in capsys.readouterr().out
    assert main(["budget", "--sweep", str(tmp_path / "sweep.json"), "--model", str(tmp_path / "run"),
                 "--max-gflops", "0.000001"]) == 2
    assert "cheapest is tokens/depth/width 4/1/16" in capsys.readouterr().err
