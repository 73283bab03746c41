"""--device on every command that runs a model, and latency caches that never answer for another device."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from adaperceiver import build_model, save_pretrained
from adaperceiver.adapt.budget import CACHE_NAME, latency_key, machine_key, measure_configurations
from adaperceiver.adapt.policy import ActionSpace, configuration_latency
from adaperceiver.cli import build_parser, main
from adaperceiver.errors import UserError

MODEL_COMMANDS = ["train", "demo", "sweep", "teacher", "distill", "policy train", "policy eval", "budget", "export",
                  "dense-visualize"]


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


@pytest.fixture(scope="module")
def model(tiny_config):
    return build_model(tiny_config()).eval()


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_command_that_runs_a_model_takes_device(command):
    p = _subparser(build_parser(), command.split())
    assert "--device" in {s for a in p._actions for s in a.option_strings}, command


def test_export_runs_on_the_named_device_and_refuses_unknown_ones(model, tmp_path, capsys, cli_error):
    save_pretrained(model, tmp_path / "m")
    argv = ["export", "--model", str(tmp_path / "m"), "--tokens", "8", "--depth", "2", "--width", "16",
            "--out", str(tmp_path / "s")]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert "device 'gpu7' is not a torch device" in cli_error([*argv, "--device", "gpu7"], capsys)
    if not torch.cuda.is_available():
        line = cli_error([*argv, "--device", "cuda"], capsys)
        assert "device 'cuda' is not available here" in line, line


def test_latency_key_names_device_chip_dtype_compile_batch_and_torch(model):
    key = latency_key(model, 4)
    assert (key["device"], key["dtype"], key["compile"], key["batch"], key["torch"]) == (
        "cpu", "torch.float32", "eager", "4", torch.__version__)
    assert key["chip"]  # the CPU model name (or the GPU's, on CUDA)
    assert latency_key(model.for_inference(torch.bfloat16), 4)["compile"] == "slim"


def test_a_cache_of_another_chip_is_refused_and_never_reused(model, tmp_path):
    cache = tmp_path / CACHE_NAME
    configs = [(4, 1, 8), (8, 2, 16)]
    gpu_key = machine_key(model, 1).replace(f"chip {latency_key(model, 1)['chip']}", "chip NVIDIA H100").replace(
        "device cpu", "device cuda:0")
    cache.write_text(json.dumps({gpu_key: {"4/1/8": 0.01, "8/2/16": 0.02}}))
    with pytest.raises(UserError, match="was measured for device cuda:0, chip NVIDIA H100; this model asks for "
                                        "device cpu, chip .*: latencies do not carry across devices"):
        measure_configurations(model, configs, 1, cache, measure_missing=False)
    calls = []
    got = measure_configurations(model, configs, 1, cache, lambda m, s, b: calls.append(s.tokens) or 5.0)
    assert got == {"4/1/8": 5.0, "8/2/16": 5.0} and len(calls) == 2  # measured here, not taken from the GPU entry
    assert set(json.loads(cache.read_text())) == {gpu_key, machine_key(model, 1)}
    assert measure_configurations(model, configs, 1, cache, measure_missing=False) == got  # now it answers


def test_budget_cached_only_refuses_a_cache_without_this_batch_size(model, tmp_path, capsys, cli_error):
    save_pretrained(model, tmp_path / "run")
    rows = [{"tokens": 8, "depth": 2, "width": 16, "acc1": 90.0, "gflops": 0.01}]
    (tmp_path / "sweep.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / CACHE_NAME).write_text(json.dumps({machine_key(model, 1): {"8/2/16": 0.5}}))
    argv = ["budget", "--sweep", str(tmp_path / "sweep.json"), "--model", str(tmp_path / "run"), "--max-ms", "10",
            "--cached-only", "--device", "cpu"]
    assert main(argv) == 0 and "latency_ms=0.5" in capsys.readouterr().out
    line = cli_error([*argv, "--batch-size", "8"], capsys)
    assert "was measured for batch 1; this model asks for batch 8" in line, line


def test_policy_latency_cost_is_cached_under_its_key(model, tmp_path, monkeypatch):
    import adaperceiver.adapt.policy.space as space_mod

    space = ActionSpace((4, 8), (1, 2), (8, 16))
    first = configuration_latency(model, space, batch_size=2, repeats=1, cache_path=tmp_path / CACHE_NAME)
    assert first.shape == (2, 2, 2) and bool((first > 0).all())
    monkeypatch.setattr(space_mod, "measure_latency", lambda *a, **k: pytest.fail("measured again"))
    again = configuration_latency(model, space, batch_size=2, repeats=1, cache_path=tmp_path / CACHE_NAME)
    assert torch.equal(first, again)
