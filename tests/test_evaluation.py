"""Configuration sweeps: rows equal direct calls, costs shrink along each axis, files parse, Pareto marking."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from adaperceiver import build_model, save_pretrained
from adaperceiver.evaluation import (
    ClassificationAccuracy,
    SweepConfig,
    active_parameters,
    evaluate_grid,
    get_metric,
    list_metrics,
    measure_latency,
    pareto_front,
    register_metric,
    run_sweep,
)

FAST = dict(progress=False, latency_warmup=1, latency_repeats=2)


def _data(n=10, classes=7, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))


@pytest.fixture(scope="module")
def swept(tmp_path_factory, loud_init, tiny_config):
    """One sweep of a tiny random model over a tiny synthetic dataset, shared by the tests below."""
    torch.manual_seed(0)
    model = loud_init(build_model(tiny_config(num_classes=7, depth=2, token_grans=(4, 8, 16)))).eval()
    data = _data()
    out = tmp_path_factory.mktemp("sweep")
    baselines = [{"name": "static 16/2/32", "acc1": 30.0, "gflops": 0.001, "latency_ms": 0.5},
                 {"name": "static 8/1/16", "acc1": 20.0, "gflops": 0.0005}]
    rows = run_sweep(model, DataLoader(data, batch_size=4), out, latency_batch_sizes=(1, 3), baselines=baselines, **FAST)
    return model, data, out, rows


def _by_config(rows):
    return {(r["tokens"], r["depth"], r["width"]): r for r in rows}


def test_rows_cover_the_grid_and_match_direct_calls(swept):
    model, data, _, rows = swept
    cfg = model.cfg
    assert len(rows) == len(cfg.trained_grans) * cfg.depth * len(cfg.widths) == len(model.configurations())
    x, y = data.tensors
    distinct = set()
    with torch.no_grad():
        for (t, d, w), row in _by_config(rows).items():
            logits = model(x, tokens=t, depth=d, width=w)
            acc = ClassificationAccuracy()
            acc.update(logits, y)
            ref = acc.compute()
            assert row["acc1"] == pytest.approx(ref["acc1"]) and row["acc5"] == pytest.approx(ref["acc5"])
            distinct.add(tuple(logits.argmax(1).tolist()))
    assert len(distinct) > 3  # configurations really differ, so the match above is informative


def test_costs_shrink_along_each_axis(swept):
    model, _, _, rows = swept
    cfg, by = model.cfg, _by_config(swept[3])
    full = by[(cfg.num_latents, cfg.depth, cfg.embed_dim)]
    assert by[(cfg.trained_grans[0], cfg.depth, cfg.embed_dim)]["gflops"] < full["gflops"]
    assert by[(cfg.num_latents, 1, cfg.embed_dim)]["gflops"] < full["gflops"]
    assert by[(cfg.num_latents, cfg.depth, cfg.widths[0])]["gflops"] < full["gflops"]
    # parameters: all of them at the full configuration, fewer with depth and width, same for tokens
    assert full["params"] == sum(p.numel() for p in model.parameters())
    assert by[(cfg.trained_grans[0], cfg.depth, cfg.embed_dim)]["params"] == full["params"]
    blk = sum(p.numel() for p in model.blocks[0].parameters())
    assert by[(cfg.num_latents, 1, cfg.embed_dim)]["params"] == full["params"] - (cfg.depth - 1) * blk
    w = cfg.widths[0]
    dropped = cfg.mlp_hidden - int(w * cfg.ffn_ratio)
    per_unit = 2 * cfg.embed_dim + 1  # fc1 row + fc1 bias + fc2 column
    assert by[(cfg.num_latents, cfg.depth, w)]["params"] == full["params"] - cfg.depth * dropped * per_unit


def test_latency_fields_and_pareto_flags(swept):
    _, _, _, rows = swept
    for r in rows:
        for b in (1, 3):
            assert r[f"latency_ms_b{b}"] > 0
            assert r[f"throughput_b{b}"] == pytest.approx(1000.0 * b / r[f"latency_ms_b{b}"])
    for flag, cost in (("pareto_gflops", "gflops"), ("pareto_latency_b1", "latency_ms_b1"),
                       ("pareto_latency_b3", "latency_ms_b3")):
        assert [r[flag] for r in rows] == pareto_front([(r[cost], r["acc1"]) for r in rows])
        assert any(r[flag] for r in rows)
    cheapest = min(rows, key=lambda r: r["gflops"])
    best = max(rows, key=lambda r: (r["acc1"], -r["gflops"]))
    assert cheapest["pareto_gflops"] and best["pareto_gflops"]


def test_output_files_parse(swept):
    _, _, out, rows = swept
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert {"tokens", "depth", "width", "acc1", "acc5", "gflops", "params", "latency_ms_b1", "throughput_b3",
            "pareto_gflops", "pareto_latency_b1"} <= set(table[0])
    assert float(table[0]["gflops"]) == pytest.approx(rows[0]["gflops"], rel=1e-5)
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["primary"] == "acc1" and meta["higher_is_better"] is True
    assert meta["latency_batch_sizes"] == [1, 3] and meta["num_images"] == 10
    assert meta["rows"] == rows and meta["baselines"][0]["name"] == "static 16/2/32"
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_pareto_front_hand_made_points():
    pts = [(1.0, 50.0), (2.0, 60.0), (2.0, 55.0), (3.0, 60.0), (0.5, 40.0), (4.0, 70.0), (4.0, 70.0)]
    assert pareto_front(pts) == [True, True, False, False, True, True, True]
    # lower-is-better metric (e.g. RMSE): the front is the low-error, low-cost corner
    err = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (0.5, 9.0)]
    assert pareto_front(err, higher_is_better=False) == [True, True, False, True]
    assert pareto_front([]) == []


def test_active_parameters_and_latency_helpers(tiny_config):
    model = build_model(tiny_config()).eval()
    total = sum(p.numel() for p in model.parameters())
    assert active_parameters(model) == total
    assert active_parameters(model, (4, 3, 16)) < active_parameters(model, (4, 3, 24)) < total
    assert active_parameters(model, (4, 1, 32)) < active_parameters(model, (4, 2, 32)) < total
    with pytest.raises(ValueError, match=r"depth must be an int in \[1, 3\]"):
        active_parameters(model, (4, 4, 32))
    model.train()
    t = measure_latency(model, (8, 2, 24), batch_size=2, warmup=1, repeats=3)
    assert t.batch_size == 2 and t.repeats >= 3 and t.median_ms > 0 and t.throughput > 0
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="batch_size"):
        measure_latency(model, (8, 2, 24), batch_size=0)
    with pytest.raises(TypeError, match=r"a setting is a Setting, a tuple of 3 values .*got 8 \(0.2 took them as separate"):
        measure_latency(model, 8, 2, 24)


class _NegMaxProb:
    """A lower-is-better test metric: mean of (1 - max softmax)."""

    primary = "uncertainty"
    higher_is_better = False

    def __init__(self):
        self.total, self.n = 0.0, 0

    def update(self, pred, target):
        self.total += float((1 - pred.softmax(-1).amax(-1)).sum())
        self.n += pred.shape[0]

    def compute(self):
        return {"uncertainty": self.total / self.n}


def test_metric_registry_and_errors(tiny_config):
    assert "classification" in list_metrics()
    with pytest.raises(ValueError, match=r"unknown metric 'nope'; known metrics: \[.*'classification'"):
        get_metric("nope")
    register_metric("test_uncertainty", lambda model, **kw: _NegMaxProb(), overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_metric("test_uncertainty", lambda model, **kw: _NegMaxProb())
    model = build_model(tiny_config(depth=1, token_grans=(8, 16), widths=(32,))).eval()
    loader = DataLoader(_data(4, classes=5), batch_size=2)
    results, acc, shape, seen = evaluate_grid(model, loader, "test_uncertainty", progress=False)
    assert acc.higher_is_better is False and shape == (3, 16, 16) and seen == 4
    expected = {}
    with torch.no_grad():  # the metric by hand: one plain forward per configuration
        for t in (8, 16):
            probs = torch.cat([model(x, tokens=t, depth=1, width=32).softmax(-1) for x, _ in loader])
            expected[SweepConfig(t, 1, 32)] = float((1 - probs.amax(-1)).mean())
    assert set(results) == set(expected)
    for c, value in expected.items():
        assert results[c]["uncertainty"] == pytest.approx(value, abs=1e-5)
    with pytest.raises(ValueError, match="no batches"):
        run_sweep(model, [], None, **FAST)


def test_cli_sweep(tmp_path, monkeypatch, capsys, tiny_config):
    from adaperceiver import cli
    from adaperceiver.cli import sweep as sweep_cmd

    model = build_model(tiny_config(depth=2, token_grans=(8, 16), widths=(16, 32), num_classes=7))
    save_pretrained(model, tmp_path / "run")
    monkeypatch.setattr(sweep_cmd, "load_dataset", lambda spec, split, *model_and_args: _data(8))
    out = tmp_path / "out"
    code = cli.main(["sweep", "--model", str(tmp_path / "run"), "--out", str(out), "--latency-batch-sizes", "1,2",
                     "--limit", "6", "--batch-size", "4", "--no-progress"])
    assert code == 0
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["num_images"] == 6 and len(meta["rows"]) == 2 * 2 * 2
    assert "| tokens | depth | width | acc1 | acc5 |" in capsys.readouterr().out
    assert meta["inference"] == {"dtype": "torch.float32", "compile": False}
    # the fast model: accuracy computed in bfloat16, latency of each slim bf16 configuration
    assert cli.main(["sweep", "--model", str(tmp_path / "run"), "--out", str(out), "--latency-batch-sizes", "1",
                     "--limit", "6", "--batch-size", "4", "--no-progress", "--dtype", "bfloat16"]) == 0
    meta16 = json.loads((out / "sweep.json").read_text())
    assert meta16["inference"] == {"dtype": "torch.bfloat16", "compile": False} and len(meta16["rows"]) == 8
    assert all(r["latency_ms_b1"] > 0 for r in meta16["rows"])
    assert cli.main(["sweep", "--model", str(tmp_path / "run"), "--latency-batch-sizes", "1,x"]) == 2
