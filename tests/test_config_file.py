"""YAML config files: --print-config, --config FILE (flags override it), RUN_DIR/config.yaml re-runs a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaperceiver.cli import main

yaml = pytest.importorskip("yaml")


def _print_config(argv, capsys) -> dict:
    assert main([*argv, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# adaperceiver ")
    return yaml.safe_load(out)


def test_print_config_round_trips_and_flags_override_the_file(tmp_path, capsys):
    first = _print_config(["train", "--lr", "0.01", "--set", "embed_dim=16", "--static", "4,2,16",
                           "--label-smoothing", "0.1", "--no-augment"], capsys)
    assert (first["lr"], first["model_overrides"], first["static"], first["augment"]) == (0.01, {"embed_dim": 16}, [4, 2, 16], False)
    assert first["objective"]["label_smoothing"] == 0.1
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(first))
    assert _print_config(["train", "--config", str(path)], capsys) == first
    over = _print_config(["train", "--config", str(path), "--epochs", "3", "--lr", "0.5"], capsys)
    assert (over["epochs"], over["lr"], over["static"]) == (3, 0.5, [4, 2, 16])
    # a dotted key is the same as a nested one; an unspecified key keeps its default
    path.write_text("objective.label_smoothing: 0.2\nbatch_size: 16\n")
    part = _print_config(["train", "--config", str(path)], capsys)
    assert (part["objective"]["label_smoothing"], part["batch_size"], part["lr"]) == (0.2, 16, 0.002)


def test_a_required_option_may_come_from_the_file(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("model: some/run\nlatency_batch_sizes: [1, 8]\n")
    got = _print_config(["sweep", "--config", str(path)], capsys)
    assert (got["model"], got["latency_batch_sizes"]) == ("some/run", "1,8")
    path.write_text("model: m\nout: o\nlams: [0.1, 0.3]\n")
    assert _print_config(["policy", "train", "--config", str(path)], capsys)["lams"] == [0.1, 0.3]


@pytest.mark.parametrize("text, expected", [
    ("lrr: 1\n", "unknown option 'lrr' for 'adaperceiver train'"),
    ("static: [1, 2]\n", "static: --static takes TOKENS,DEPTH,WIDTH"),
    ("export: foo\n", "export: must be one of ['ema', 'raw'], got 'foo'"),
    ("augment: 3\n", "augment: must be true or false, got 3"),
    ("- a list\n", "must hold a mapping of option names to values"),
    ("model: 'x\n", "is not valid YAML"),
    ("lr: -1\n", "train config field lr must be in (0, 1]"),  # the same range check as --lr -1
])
def test_bad_config_files_are_one_line(tmp_path, capsys, cli_error, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = cli_error(["train", "--config", str(path), "--out", str(tmp_path), "--epochs", "1"], capsys)
    assert line.startswith("adaperceiver train: error:") and expected in line, line
    assert "does_not_exist.yaml: cannot read it" in cli_error(["train", "--config", str(tmp_path / "does_not_exist.yaml")], capsys)


def test_run_directory_keeps_the_resolved_yaml_and_it_reruns_the_run(tmp_path, capsys, train_argv, cli_error):
    pytest.importorskip("sklearn")
    assert main(train_argv(tmp_path, "--lr", "0.004", name="a")) == 0
    saved = tmp_path / "a" / "config.yaml"
    resolved = yaml.safe_load(saved.read_text())
    assert resolved["lr"] == 0.004 and resolved["name"] == "a" and "resume" not in resolved
    assert main(["train", "--config", str(saved), "--name", "b"]) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / n / "config.json").read_text())["train"] for n in ("a", "b"))
    assert {**a, "name": "b"} == b
    # the re-run learns the same weights (same seed, same settings)
    wa, wb = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # resuming with a file that would change the saved run is refused, naming the file's key
    changed = tmp_path / "changed.yaml"
    changed.write_text(saved.read_text().replace("lr: 0.004", "lr: 0.009"))
    line = cli_error(["train", "--config", str(changed), "--resume"], capsys)
    assert f"lr in {changed} would change lr (saved 0.004, given 0.009)" in line, line


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.skipif(not CONFIGS, reason="configs/ is not next to the tests (an installed-package run)")
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_are_read_by_the_command_their_first_line_names(path, capsys):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# adaperceiver ") and f"--config configs/{path.name}" in first, first
    command = first.removeprefix("# adaperceiver ").split(" --config")[0].split()
    resolved = _print_config([*command, "--config", str(path)], capsys)
    given = yaml.safe_load(path.read_text())
    for key, value in given.items():  # every key of the example reaches the resolved configuration
        assert resolved[key] == value if not isinstance(value, dict) else resolved[key].items() >= value.items(), key
