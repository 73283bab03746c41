"""The command line: options generated from the config dataclasses, and `adaperceiver demo` end to end."""

from __future__ import annotations

import csv
import json

import pytest

from adaperceiver import from_pretrained
from adaperceiver.cli import build_parser, main
from adaperceiver.cli.options import config_fields, config_from_args, flag_for
from adaperceiver.cli.train import TRAIN_GROUPS
from adaperceiver.training import TrainConfig


def _train_parser():
    parser = build_parser()
    return parser, next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" train"))


def test_every_train_config_field_has_a_flag_with_help():
    _, train = _train_parser()
    flags = {s for a in train._actions for s in a.option_strings}
    for path, f, _ in config_fields(TrainConfig):
        assert f.metadata.get("group"), f"{path} has no group"
        assert f.metadata.get("help"), f"{path} has no help"
        if f.metadata["group"] in TRAIN_GROUPS:
            is_bool = isinstance(f.default, bool)
            assert flag_for(path, f.default, is_bool) in flags, path


def test_defaults_round_trip_and_flags_reach_the_config():
    parser, _ = _train_parser()
    assert config_from_args(TrainConfig, parser.parse_args(["train"])) == TrainConfig()
    args = parser.parse_args(["train", "--lr", "0.01", "--no-augment", "--token-weights", "1,2", "--set", "depth=3",
                              "--label-smoothing", "0.1", "--no-width-sampling", "--static", "4,2,16", "--out", "o"])
    cfg = config_from_args(TrainConfig, args)
    assert (cfg.lr, cfg.augment, cfg.model_overrides, cfg.static, cfg.out_dir) == (0.01, False, {"depth": 3}, (4, 2, 16), "o")
    assert (cfg.objective.token_weights, cfg.objective.label_smoothing, cfg.objective.sample_widths) == ((1.0, 2.0), 0.1, False)


def test_demo_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    pytest.importorskip("sklearn")  # the digits dataset
    pytest.importorskip("matplotlib")
    tiny = {"embed_dim": 16, "num_heads": 2, "depth": 2, "num_latents": 8, "token_grans": [4, 8], "widths": [8, 16]}
    args = ["demo", "--dataset", "digits", "--train-subset", "64", "--val-subset", "32", "--epochs", "1",
            "--batch-size", "32", "--warmup-steps", "1", "--latency-batch-sizes", "1", "--no-progress",
            "--out", str(tmp_path), "--name", "d"] + [f"--set={k}={json.dumps(v)}" for k, v in tiny.items()]
    assert main(args) == 0
    run = tmp_path / "d"
    assert "everything is in" in capsys.readouterr().out
    with open(run / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(int(r["tokens"]), int(r["depth"]), int(r["width"])) for r in rows} == {
        (t, d, w) for t in (4, 8) for d in (1, 2) for w in (8, 16)}
    assert any(r["pareto_gflops"] == "True" for r in rows)
    summary = (run / "summary.md").read_text()
    assert "`digits`, 64 training / 32 validation images" in summary and "1 epochs x 2 steps" in summary
    assert (run / "sweep" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    model = from_pretrained(run)
    assert model.cfg.embed_dim == 16 and list(model.cfg.token_grans) == [4, 8]
    # a second demo into the same directory is refused with one line, unless --overwrite
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    from adaperceiver.cli import export as export_cmd
    from adaperceiver.errors import UserError

    def mistake(path, **kw):
        raise UserError(f"no model at {path}")

    monkeypatch.setattr(export_cmd, "from_pretrained", mistake)
    argv = ["export", "--model", str(tmp_path), "--tokens", "4", "--depth", "1", "--width", "8", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"adaperceiver export: error: no model at {tmp_path}\n"

    def bug(path, **kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(export_cmd, "from_pretrained", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)
