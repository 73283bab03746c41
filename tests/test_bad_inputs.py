"""Bad inputs, table-driven: each row is one thing a user can get wrong.

Every row must end in a clear one-line error that names the option, value or file and what is
allowed (exit status 2 from the CLI, ``ValueError`` from the API), or in correct behaviour; nothing
may be silently accepted when it changes results. Rows are small and fast (tiny models, a few
digits images, no training beyond a couple of steps).
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import adaperceiver
from adaperceiver import AdaPerceiverConfig, create_model, from_pretrained, save_pretrained
from adaperceiver.data import get_dataset

pytest.importorskip("sklearn")  # CLI rows train on sklearn's 8x8 digits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_overrides):
    """Small files the rows point at: a saved model, a digits-shaped model, image folders, broken files."""
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    save_pretrained(create_model("adaperceiver_tiny", **tiny_overrides), root / "tiny")  # 28x28 grey, 10 classes
    save_pretrained(create_model("adaperceiver_tiny", **{**tiny_overrides, "img_size": 8}), root / "digits_model")
    save_pretrained(create_model("adaperceiver_tiny", **{**tiny_overrides, "img_size": 8, "in_chans": 3}), root / "rgb_model")
    from adaperceiver.models.heads import build_dense_model

    dense_cfg = AdaPerceiverConfig(**{**tiny_overrides, "img_size": 8, "in_chans": 1})
    save_pretrained(build_dense_model("segmentation", dense_cfg, {"num_classes": 3}), root / "seg_model")
    save_pretrained(build_dense_model("depth", dense_cfg), root / "depth_model")
    save_pretrained(create_model("adaperceiver_tiny", **{**tiny_overrides, "img_size": 8, "num_classes": 5}), root / "five_classes")
    save_pretrained(create_model("adaperceiver_tiny", **{**tiny_overrides, "img_size": 8, "embed_dim": 32, "num_heads": 4,
                                                          "widths": (16, 32)}), root / "other_width")
    # config.json variants of the tiny model
    for name, edit in {"float_depth": {"depth": 4.0}, "string_dim": {"embed_dim": "abc"},
                       "zero_heads": {"num_heads": 0}}.items():
        d = root / name
        d.mkdir()
        (d / "model.safetensors").write_bytes((root / "tiny" / "model.safetensors").read_bytes())
        meta = json.loads((root / "tiny" / "config.json").read_text())
        meta["model"].update(edit)
        (d / "config.json").write_text(json.dumps(meta))
    d = root / "corrupt_config"
    d.mkdir()
    (d / "model.safetensors").write_bytes((root / "tiny" / "model.safetensors").read_bytes())
    (d / "config.json").write_text('{"model": {"embed_dim": 16,')
    # reference-conversion inputs
    (root / "ref_list.json").write_text("[1, 2, 3]")
    (root / "ref_string.json").write_text(json.dumps({"embed_dim": "abc", "num_heads": 2, "depth": 2, "max_latent_tokens": 8}))
    (root / "ref_ok.json").write_text(json.dumps({"embed_dim": 16, "num_heads": 2, "depth": 2, "max_latent_tokens": 8}))
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2, 2)}, str(root / "foreign.safetensors"))
    (root / "a_file").write_text("not a directory")
    (root / "bad_sweep.json").write_text('{"rows": [')
    # image folders
    _folder(root / "ok_folder", {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    _folder(root / "empty_class", {"train": {"a": 2, "b": 2, "c": 0}, "val": {"a": 1, "b": 1}})
    _folder(root / "val_only_class", {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1, "zebra": 1}})
    _folder(root / "one_class", {"train": {"a": 3}, "val": {"a": 1}})
    _folder(root / "bomb", {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}})
    (root / "bomb" / "train" / "a" / "0.png").write_bytes(_png_header_only(60000, 60000))
    return root


def _folder(root: Path, layout: dict) -> None:
    from PIL import Image

    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / split / cls / f"{i}.png")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb to PIL) in a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def must_not_train(monkeypatch):
    """Rows whose error must come before any training: training here fails the row."""
    from adaperceiver import training

    def boom(*a, **k):
        raise AssertionError("training started before the bad option was refused")

    monkeypatch.setattr(training.Trainer, "fit", boom)


# --------------------------------------------------------------------------------------------------
# command line: (id, argv, regexes the error line must match). {tiny}, {root} and {out} are filled in.
CLI_ROWS = [
    ("set-not-a-number", ["--set", "embed_dim=abc"], [r"embed_dim", r"abc"]),
    ("set-unknown-field", ["--set", "embed_dimm=16"], [r"embed_dimm"]),
    ("set-zero-heads", ["--set", "num_heads=0"], [r"num_heads", r"\b0\b"]),
    ("set-float-depth", ["--set", "depth=2.5"], [r"depth", r"2\.5"]),
    ("train-subset-0", ["--train-subset", "0"], [r"train[-_]subset", r"\b0\b"]),
    ("val-subset-0", ["--val-subset", "0"], [r"val[-_]subset", r"\b0\b"]),
    ("train-subset-negative", ["--train-subset", "-5"], [r"train[-_]subset", r"-5"]),
    ("token-weights-not-numbers", ["--token-weights", "a,b"], [r"token[-_]weights", r"a,b|'a'"]),
    ("token-weights-wrong-count", ["--token-weights", "1,2,3"], [r"token[-_]weights", r"granularit"]),
    ("lr-zero", ["--lr", "0"], [r"\blr\b", r"\b0"]),
    ("epochs-zero", ["--epochs", "0"], [r"epochs", r"\b0\b"]),
    ("ema-decay-one", ["--ema-decay", "1"], [r"ema[-_]decay", r"\b1"]),
    ("label-smoothing-one", ["--label-smoothing", "1.5"], [r"label[-_]smoothing", r"1\.5"]),
    ("static-two-values", ["--static", "8,2"], [r"8,2"]),
    ("static-not-trained", ["--static", "8,9,16"], [r"depth", r"\b9\b"]),
    ("device-unknown", ["--device", "tpu7"], [r"device", r"tpu7"]),
    ("device-cuda-missing", ["--device", "cuda"], [r"cuda"]),
    ("num-classes-below-data", ["--set", "num_classes=3"], [r"num_classes", r"\b3\b", r"\b10\b"]),
    ("in-chans-mismatch", ["--set", "in_chans=3"], [r"in_chans|channel", r"\b3\b"]),
    ("dataset-unknown", ["--dataset", "mnistt"], [r"mnistt"]),
    ("task-unknown", ["--task", "detection"], [r"detection"]),
    ("model-unknown", ["--model", "adaperceiver_huge"], [r"adaperceiver_huge"]),
    ("freeze-without-init", ["--freeze-backbone"], [r"freeze", r"init"]),
    ("init-from-missing", ["--init-from", "{root}/nowhere"], [r"nowhere"]),
    ("init-from-mostly-unfit", ["--init-from", "{root}/other_width"], [r"other_width", r"\d+ of \d+"]),
    ("init-from-unfit-frozen", ["--init-from", "{root}/tiny", "--freeze-backbone"], [r"tiny", r"\d+ of \d+"]),
    ("out-is-a-file", ["--out", "{root}/a_file"], [r"a_file"]),
    ("name-escapes-out", ["--name", "../../escape"], [r"name", r"escape"]),
    ("batch-larger-than-data", ["--batch-size", "64"], [r"batch[-_]size", r"\b64\b", r"\b32\b"]),
    ("widths-beyond-embed-dim", ["--widths", "8,999"], [r"widths", r"999", r"\b16\b"]),
]


@pytest.mark.parametrize("argv,patterns", [r[1:] for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_train_option_rows(argv, patterns, files, tmp_path, capsys, monkeypatch, cli_error, train_argv):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    must_not_train(monkeypatch)
    argv = [a.format(root=files, out=tmp_path) for a in argv]
    line = cli_error(train_argv(tmp_path, *argv), capsys)
    for pat in patterns:
        assert re.search(pat, line, re.I), f"{pat!r} not in: {line}"


OTHER_ROWS = [
    # other commands; each must fail before doing any real work
    ("demo-latency-sizes", ["demo", "--latency-batch-sizes", "a,b", "--out", "{out}"], [r"latency[-_]batch[-_]sizes", r"a,b|'a'"]),
    ("demo-baselines", ["demo", "--baselines", "1,2", "--out", "{out}"], [r"baselines|configuration", r"1,2"]),
    ("sweep-latency-sizes", ["sweep", "--model", "{root}/tiny", "--latency-batch-sizes", "a,b"], [r"latency[-_]batch[-_]sizes", r"a"]),
    ("sweep-model-missing", ["sweep", "--model", "{root}/nowhere"], [r"nowhere"]),
    ("sweep-float-depth-config", ["sweep", "--model", "{root}/float_depth", "--data", "digits"], [r"config\.json", r"depth", r"4\.0"]),
    ("sweep-string-config", ["sweep", "--model", "{root}/string_dim", "--data", "digits"], [r"config\.json", r"embed_dim", r"abc"]),
    ("sweep-zero-heads-config", ["sweep", "--model", "{root}/zero_heads", "--data", "digits"], [r"config\.json", r"num_heads"]),
    ("sweep-corrupt-config", ["sweep", "--model", "{root}/corrupt_config", "--data", "digits"], [r"config\.json"]),
    ("sweep-other-preparation", ["sweep", "--model", "{root}/tiny", "--data", "digits", "--limit", "4"],
     [r"'digits'", r"mean", r"the model expects", r"--allow-mismatch"]),
    ("sweep-classifier-on-segmentation", ["sweep", "--model", "{root}/tiny", "--data", "fashion_mnist_seg", "--limit", "4"],
     [r"classif", r"segment"]),
    ("budget-threads-negative", ["budget", "--sweep", "{root}/bad_sweep.json", "--model", "{root}/tiny", "--max-gflops", "1",
                                 "--threads", "-1"], [r"threads", r"-1"]),
    ("budget-corrupt-sweep", ["budget", "--sweep", "{root}/bad_sweep.json", "--model", "{root}/tiny", "--max-gflops", "1"],
     [r"bad_sweep\.json"]),
    ("teacher-cnn-zero-channels", ["teacher", "--channels", "8,0", "--dataset", "digits", "--out", "{out}"],
     [r"channels", r"\b0\b"]),
    ("teacher-depth-zero", ["teacher", "--arch", "vit", "--depth", "0", "--dataset", "digits", "--out", "{out}"], [r"depth", r"\b0\b"]),
    ("teacher-heads-dont-divide", ["teacher", "--arch", "vit", "--embed-dim", "30", "--num-heads", "4", "--dataset", "digits",
                                   "--out", "{out}"],
     [r"embed[-_]dim|num[-_]heads", r"30"]),
    ("convert-json-list", ["convert", "{root}/foreign.safetensors", "--config", "{root}/ref_list.json", "--out", "{out}/c"],
     [r"ref_list\.json"]),
    ("convert-string-field", ["convert", "{root}/foreign.safetensors", "--config", "{root}/ref_string.json", "--out", "{out}/c"],
     [r"embed_dim", r"abc"]),
    ("convert-foreign-weights", ["convert", "{root}/foreign.safetensors", "--config", "{root}/ref_ok.json", "--out", "{out}/c"],
     [r"foreign\.safetensors"]),
    ("convert-missing-config", ["convert", "{root}/foreign.safetensors", "--config", "{root}/nowhere.json", "--out", "{out}/c"],
     [r"nowhere\.json"]),
    ("distill-teacher-wrong-channels", ["distill", "--teacher", "{root}/rgb_model", "--dataset", "digits",
                                        "--train-subset", "32", "--batch-size", "16", "--out", "{out}"],
     [r"rgb_model", r"channel"]),
    # teacher / student compatibility, checked before training (issue 24)
    ("distill-teacher-segmentation", ["distill", "--teacher", "{root}/seg_model", "--dataset", "digits", "--train-subset", "32",
                                      "--batch-size", "16", "--out", "{out}"], [r"seg_model", r"segmentation", r"classif"]),
    ("distill-teacher-depth", ["distill", "--teacher", "{root}/depth_model", "--dataset", "digits", "--train-subset", "32",
                               "--batch-size", "16", "--out", "{out}"], [r"depth_model", r"\bdepth model", r"classif"]),
    ("distill-teacher-image-size", ["distill", "--teacher", "{root}/tiny", "--dataset", "digits", "--train-subset", "32",
                                    "--batch-size", "16", "--out", "{out}"], [r"\btiny\b", r"28x28", r"8x8"]),
    ("distill-teacher-classes", ["distill", "--teacher", "{root}/five_classes", "--dataset", "digits", "--train-subset", "32",
                                 "--batch-size", "16", "--out", "{out}"], [r"five_classes", r"\b5 classes", r"\b10\b"]),
    ("distill-feature-weight-nan", ["distill", "--teacher", "{root}/digits_model", "--feature-weight", "nan", "--dataset",
                                    "digits", "--out", "{out}"], [r"--feature-weight", r"nan"]),
    ("distill-teacher-cache-is-a-file", ["distill", "--teacher", "{root}/digits_model", "--teacher-cache", "{root}/a_file",
                                         "--dataset", "digits", "--train-subset", "32", "--batch-size", "16", "--out", "{out}",
                                         "--set", "patch_size=4"], [r"a_file", r"not a directory"]),
    ("distill-teacher-module-missing", ["distill", "--teacher", "python:no_such_module:make", "--dataset", "digits",
                                        "--out", "{out}"], [r"no_such_module"]),
    ("distill-timm-missing", ["distill", "--teacher", "timm:vit_tiny_patch16_224", "--dataset", "digits", "--out", "{out}"],
     [r"timm"]),
    ("export-out-is-a-file", ["export", "--model", "{root}/tiny", "--tokens", "4", "--depth", "1", "--width", "8",
                              "--out", "{root}/a_file"], [r"a_file"]),
    ("export-untrained-tokens", ["export", "--model", "{root}/tiny", "--tokens", "99", "--depth", "1", "--width", "8",
                                 "--out", "{out}/e"], [r"tokens", r"99"]),
    # every error names the option as typed (issue 24), list options included
    ("demo-latency-sizes-zero", ["demo", "--latency-batch-sizes", "0", "--out", "{out}"], [r"--latency-batch-sizes", r"'0'"]),
    ("demo-baselines-named", ["demo", "--baselines", "1,2", "--out", "{out}"], [r"--baselines", r"1,2"]),
    ("visualize-config", ["dense-visualize", "--model", "{root}/nowhere", "--config", "8,2"], [r"--config", r"8,2"]),
    ("sweep-latency-sizes-zero", ["sweep", "--model", "{root}/tiny", "--latency-batch-sizes", "1,0"],
     [r"--latency-batch-sizes", r"1,0"]),
    ("budget-gflops-nan", ["budget", "--sweep", "{root}/bad_sweep.json", "--model", "{root}/tiny", "--max-gflops", "nan"],
     [r"--max-gflops", r"nan"]),
    ("policy-lams-nan", ["policy", "train", "--model", "{root}/nowhere", "--out", "{out}", "--lams", "0.1", "nan"],
     [r"--lams", r"nan", r"\[0, 100\]"]),
    ("policy-entropy", ["policy", "train", "--model", "{root}/nowhere", "--out", "{out}", "--entropy", "-1"],
     [r"--entropy", r"-1"]),
    ("policy-lr", ["policy", "train", "--model", "{root}/nowhere", "--out", "{out}", "--lr", "0"], [r"--lr", r"\b0"]),
    ("policy-limit", ["policy", "train", "--model", "{root}/nowhere", "--out", "{out}", "--limit", "0"], [r"--limit"]),
    ("policy-taus", ["policy", "eval", "--model", "{root}/nowhere", "--out", "{out}", "--taus", "0.5", "2"],
     [r"--taus", r"\b2"]),
    ("policy-latency-images", ["policy", "eval", "--model", "{root}/nowhere", "--out", "{out}", "--latency-images", "0"],
     [r"--latency-images"]),
]


@pytest.mark.parametrize("argv,patterns", [r[1:] for r in OTHER_ROWS], ids=[r[0] for r in OTHER_ROWS])
def test_command_rows(argv, patterns, files, tmp_path, capsys, monkeypatch, cli_error):
    must_not_train(monkeypatch)
    if "timm:" in " ".join(argv) and importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here")
    argv = [a.format(root=files, out=tmp_path) for a in argv]
    if argv[0] == "demo":  # a wrong option must be refused before the 6-minute training starts
        argv += ["--dataset", "digits"]
    line = cli_error(argv, capsys)
    assert not re.search(r"\bparse_\w+|<function", line), f"an internal name in: {line}"
    for pat in patterns:
        assert re.search(pat, line, re.I), f"{pat!r} not in: {line}"


# --------------------------------------------------------------------------------------------------
# data
DATA_ROWS = [
    ("subset-0", lambda r: get_dataset("digits", "train", subset=0), [r"subset", r"\b0\b"]),
    ("subset-negative", lambda r: get_dataset("digits", "train", subset=-3), [r"subset", r"-3"]),
    ("subset-float", lambda r: get_dataset("digits", "train", subset=2.5), [r"subset", r"2\.5"]),
    ("subset-bool", lambda r: get_dataset("digits", "train", subset=True), [r"subset", r"True"]),
    ("split-unknown", lambda r: get_dataset("digits", "dev"), [r"split", r"dev"]),
    ("empty-class-folder", lambda r: get_dataset("imagefolder", "train", root=r / "empty_class"), [r"empty_class", r"\bc\b"]),
    ("class-only-in-val", lambda r: get_dataset("imagefolder", "val", root=r / "val_only_class"), [r"zebra"]),
    ("single-class", lambda r: get_dataset("imagefolder", "train", root=r / "one_class"), [r"one_class", r"class"]),
    ("decompression-bomb", lambda r: [get_dataset("imagefolder", "train", root=r / "bomb", in_chans=1)[i] for i in range(2)],
     [r"0\.png", r"pixels|bomb|large"]),
]


@pytest.mark.parametrize("call,patterns", [r[1:] for r in DATA_ROWS], ids=[r[0] for r in DATA_ROWS])
def test_data_rows(call, patterns, files):
    with pytest.raises(ValueError) as info:
        call(files)
    for pat in patterns:
        assert re.search(pat, str(info.value), re.I), f"{pat!r} not in: {info.value}"


def test_a_good_image_folder_still_loads(files):
    ds = get_dataset("imagefolder", "train", root=files / "ok_folder", in_chans=1, image_size=8)
    assert len(ds) == 4 and ds.classes == ("a", "b")
    assert len(get_dataset("digits", "train", subset=5)) == 5


# --------------------------------------------------------------------------------------------------
# model configuration: every field checked up front for type and range
CONFIG_ROWS = [
    ("num_heads", 0), ("num_heads", -2), ("patch_size", 0), ("depth", 0), ("depth", 4.0), ("depth", "4"),
    ("num_classes", 0), ("embed_dim", "abc"), ("embed_dim", 0), ("img_size", 0), ("in_chans", 0), ("in_chans", 2.0),
    ("ffn_ratio", 0), ("ffn_ratio", -1.0), ("ffn_ratio", "2"), ("mlp_hidden_dim", 0), ("num_latents", 0),
    ("max_latents_mult", 0), ("token_grans", "abc"), ("token_grans", (4.5, 16)), ("widths", (0, 32)),
    ("widths", (16.5, 32)), ("rope_theta", 0), ("rope_theta", "big"), ("qkv_bias", "yes"), ("proj_bias", 1),
    ("ls_init", -0.1), ("ls_init", "small"), ("embed_mlp", "no"), ("head_mlp", None), ("latent_std", -1.0),
    ("latent_mask", "diagonal"), ("task", "detection"), ("task", 3),
    # absurd floats that pass "> 0": they train to NaN or do nothing (issue 24)
    ("rope_theta", 1e-300), ("rope_theta", float("inf")), ("rope_theta", 1e300), ("ffn_ratio", float("nan")),
    ("ffn_ratio", float("inf")), ("ls_init", float("inf")), ("latent_std", 1e300),
]


@pytest.mark.parametrize("field,value", CONFIG_ROWS, ids=[f"{f}={v!r}" for f, v in CONFIG_ROWS])
def test_model_config_rows(field, value):
    base = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, num_heads=4, depth=2, num_latents=16,
                token_grans=(4, 16), widths=(16, 32))
    with pytest.raises(ValueError) as info:
        AdaPerceiverConfig(**{**base, field: value})
    msg = str(info.value)
    assert field in msg and (repr(value) in msg or str(value) in msg), msg


def test_model_config_accepts_json_round_trip_values():
    """What config.json gives back (lists, ints, floats for float fields) must still load."""
    cfg = AdaPerceiverConfig(token_grans=[8, 16, 32], widths=[32, 48, 64], ffn_ratio=2, rope_theta=10000, ls_init=None)
    assert cfg.token_grans == (8, 16, 32) and cfg.ffn_ratio == 2.0
    assert AdaPerceiverConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# training and objective configuration
TRAIN_ROWS = [
    ("epochs", "5"), ("epochs", 2.5), ("batch_size", 0), ("lr", 0.0), ("lr", "fast"), ("min_lr", -1.0),
    ("train_subset", 0), ("val_subset", 0), ("train_subset", 1.5), ("warmup_steps", -1), ("grad_clip", -1.0),
    ("seed", "x"), ("seed", -1), ("dataset", 5), ("name", ""), ("name", "../x"), ("static", (8, 2)),
    ("static", (8.5, 2, 16)), ("keep_checkpoints", 0), ("log_every", 0), ("image_size", 0), ("augment", "yes"),
    ("export", "best"), ("max_steps", 0), ("ema_decay", 1.0), ("accum_steps", 0), ("num_workers", -1),
    ("device", "tpu7"), ("checkpoint_every", -5), ("model_overrides", {"embed_dim": "abc"}),
    ("lr", float("inf")), ("lr", 50.0), ("lr", float("nan")), ("min_lr", 1e300), ("weight_decay", 100.0),
    ("grad_clip", float("inf")), ("ema_decay", float("nan")), ("model_overrides", {"rope_theta": 1e-300}),
]


@pytest.mark.parametrize("field,value", TRAIN_ROWS, ids=[f"{f}={v!r}" for f, v in TRAIN_ROWS])
def test_train_config_rows(field, value):
    from adaperceiver.training import TrainConfig

    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    msg = str(info.value)
    named = field if field != "model_overrides" else next(iter(value))
    assert named in msg, msg


OBJECTIVE_ROWS = [("kd_weight", -1.0), ("ce_weight", -0.5), ("ce_weight", "one"), ("kd_temperature", 0.0),
                  ("widths", (0, 16)), ("token_weights", ("a",)), ("depth_weighting", "cubic"),
                  ("all_depths", "no"), ("label_smoothing", -0.1), ("label_smoothing", 0.99), ("kd_temperature", 1e-300),
                  ("kd_temperature", float("inf")), ("ce_weight", float("inf")), ("token_weights", (float("nan"), 1.0)),
                  ("full_token_weight", 1e-300)]


def test_float_options_show_their_range_and_min_lr_stays_below_lr(capsys, cli_error, train_argv, tmp_path):
    from adaperceiver.cli import build_parser
    from adaperceiver.training import TrainConfig

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    helps = {o: a.help for cmd in ("distill", "train") for a in sub.choices[cmd]._actions for o in a.option_strings}
    for flag, spec in [("--lr", "(0, 1]"), ("--weight-decay", "[0, 1]"), ("--temperature", "[0.1, 100]"),
                       ("--label-smoothing", "[0, 0.5]"), ("--ema-decay", "[0, 1)"), ("--kd-weight", "[0, 100]")]:
        assert f"(allowed: {spec})" in helps[flag], (flag, helps[flag])
    with pytest.raises(ValueError, match=r"min_lr \(0\.01\) must not exceed lr \(0\.001\)"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    line = cli_error(train_argv(tmp_path, "--set", "rope_theta=1e-300"), capsys)
    assert "rope_theta" in line and "[1, 1e9]" in line and "1e-300" in line, line


@pytest.mark.parametrize("field,value", OBJECTIVE_ROWS, ids=[f"{f}={v!r}" for f, v in OBJECTIVE_ROWS])
def test_objective_config_rows(field, value):
    from adaperceiver.training import ObjectiveConfig

    with pytest.raises(ValueError) as info:
        ObjectiveConfig(**{field: value})
    assert field in str(info.value), str(info.value)


CONVERT_ROWS = [
    ("json-list", [1, 2], [r"object|mapping|dict"]),
    ("string-field", {"embed_dim": "abc", "num_heads": 2, "depth": 2, "max_latent_tokens": 8}, [r"embed_dim", r"abc"]),
    ("zero-depth", {"embed_dim": 16, "num_heads": 2, "depth": 0, "max_latent_tokens": 8}, [r"depth", r"\b0\b"]),
    ("bool-as-number", {"embed_dim": True, "num_heads": 2, "depth": 2, "max_latent_tokens": 8}, [r"embed_dim"]),
    ("unsupported-option", {"embed_dim": 16, "num_heads": 2, "depth": 2, "max_latent_tokens": 8, "ffn_layer": "swiglu"},
     [r"ffn_layer", r"swiglu"]),
]


@pytest.mark.parametrize("ref,patterns", [r[1:] for r in CONVERT_ROWS], ids=[r[0] for r in CONVERT_ROWS])
def test_conversion_config_rows(ref, patterns):
    from adaperceiver.reference import config_from_reference

    with pytest.raises(ValueError) as info:
        config_from_reference(ref)
    for pat in patterns:
        assert re.search(pat, str(info.value), re.I), f"{pat!r} not in: {info.value}"


# --------------------------------------------------------------------------------------------------
# model calls
@pytest.fixture(scope="module")
def model(tiny_overrides):
    torch.manual_seed(0)
    return create_model("adaperceiver_tiny", **tiny_overrides).eval()  # grans (4, 8), widths (8, 16), depth 2


def _x(dtype=torch.float32):
    return torch.randn(2, 1, 28, 28).to(dtype)


CALL_ROWS = [
    ("anytime-float-count", lambda m: m.forward_anytime(_x(), token_counts=[4.5, 8]), [r"token_counts", r"4\.5"]),
    ("anytime-bool-count", lambda m: m.forward_anytime(_x(), token_counts=[True, 8]), [r"token_counts", r"True"]),
    ("anytime-empty", lambda m: m.forward_anytime(_x(), token_counts=[]), [r"token_counts"]),
    ("anytime-above-pass", lambda m: m.forward_anytime(_x(), tokens=4, token_counts=[4, 8]), [r"token_counts", r"\b8\b"]),
    ("anytime-bool-depth", lambda m: m.forward_anytime(_x(), depths=[True]), [r"depth", r"True"]),
    ("width-list-fractional", lambda m: m(_x(), width=[8.9, 16.5]), [r"width", r"8\.9"]),
    ("width-0d-tensor-fractional", lambda m: m(_x(), width=torch.tensor(12.7)), [r"width", r"12\.7"]),
    ("width-tensor-fractional", lambda m: m(_x(), width=torch.tensor([8.5, 16.0])), [r"width", r"8\.5"]),
    ("width-float", lambda m: m(_x(), width=12.5), [r"width", r"12\.5"]),
    ("width-list-bool", lambda m: m(_x(), width=[True, 16]), [r"width", r"True"]),
    ("tokens-float", lambda m: m(_x(), tokens=4.0), [r"tokens", r"4\.0"]),
    ("depth-zero", lambda m: m(_x(), depth=0), [r"depth", r"\b0\b"]),
    ("input-uint8", lambda m: m(_x().clamp(0, 1).mul(255).to(torch.uint8)), [r"uint8", r"float"]),
    ("input-int64", lambda m: m(_x().long()), [r"int64", r"float"]),
    ("input-numpy", lambda m: m(_x().numpy()), [r"numpy|ndarray", r"tensor"]),
    ("input-list", lambda m: m([[0.0]]), [r"list", r"tensor"]),
    ("input-3d", lambda m: m(torch.randn(1, 28, 28)), [r"\(B, C, H, W\)|4"]),
    ("input-channels", lambda m: m(torch.randn(1, 3, 28, 28)), [r"channel", r"\b3\b"]),
    ("early-exit-threshold", lambda m: m.forward_early_exit(_x(), threshold=1.5), [r"threshold", r"1\.5"]),
]


@pytest.mark.parametrize("call,patterns", [r[1:] for r in CALL_ROWS], ids=[r[0] for r in CALL_ROWS])
def test_model_call_rows(call, patterns, model):
    with pytest.raises(ValueError) as info, torch.no_grad():
        call(model)
    for pat in patterns:
        assert re.search(pat, str(info.value), re.I), f"{pat!r} not in: {info.value}"


@pytest.mark.parametrize("counts", [[4, 8], [3, 5], [3, 4, 7, 8]])
def test_token_counts_equal_separate_runs(model, counts):
    """What forward_anytime labels as token count t must be what model(x, tokens=t) gives, for
    granularities and for counts that split a granularity block (those get a pass of their own)."""
    x = _x()
    with torch.no_grad():
        out = model.forward_anytime(x, token_counts=counts)
        for t in counts:
            torch.testing.assert_close(out.get(t, 2), model(x, tokens=t), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_inputs_are_cast_to_the_model_dtype(model, dtype):
    x = _x()
    with torch.no_grad():
        want = model(x.to(dtype).to(torch.float32))
        got = model(x.to(dtype))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_integral_widths_in_any_form_are_accepted(model):
    x = _x()
    with torch.no_grad():
        ref = model(x, width=[8, 16])
        torch.testing.assert_close(model(x, width=torch.tensor([8, 16])), ref)
        torch.testing.assert_close(model(x, width=torch.tensor([8.0, 16.0])), ref)
        torch.testing.assert_close(model(x, width=torch.tensor(16)), model(x, width=16))


# --------------------------------------------------------------------------------------------------
# saved files
def _flip_data_byte(path: Path, from_end: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    raw[-from_end] ^= 0x55
    path.write_bytes(bytes(raw))


def test_bit_rot_in_saved_weights_is_refused_unless_verify_is_off(tmp_path, model):
    save_pretrained(model, tmp_path / "m")
    _flip_data_byte(tmp_path / "m" / "model.safetensors")  # inside the tensor data; the header stays valid
    with pytest.raises(ValueError, match=r"model\.safetensors.*sha256"):
        from_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m", verify=False)  # a hand-edited file, on purpose
    assert isinstance(loaded, adaperceiver.AdaPerceiver)


def test_saved_weights_without_damage_load_and_verify(tmp_path, model):
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_nan_weights_are_refused_with_the_tensor_named(tmp_path, model, tiny_overrides):
    bad = create_model("adaperceiver_tiny", **tiny_overrides)
    with torch.no_grad():
        bad.blocks[1].mlp.fc1.weight[0, 0] = float("nan")
    save_pretrained(bad, tmp_path / "m")
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight.*(NaN|finite)"):
        from_pretrained(tmp_path / "m")


def test_save_pretrained_into_a_file_names_it(tmp_path, model):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"\bf\b.*(not a directory|file)"):
        save_pretrained(model, tmp_path / "f")


def test_from_pretrained_config_errors_name_the_file(files):
    for name, field in (("float_depth", "depth"), ("string_dim", "embed_dim"), ("zero_heads", "num_heads")):
        with pytest.raises(ValueError, match=rf"config\.json.*{field}"):
            from_pretrained(files / name)


def test_budget_refuses_a_sweep_of_other_weights(tmp_path, model, tiny_overrides):
    from adaperceiver.adapt.budget import select_configuration
    from adaperceiver.checkpoint import tensors_digest

    rows = [{"tokens": 4, "depth": 1, "width": 8, "acc1": 50.0, "gflops": 0.001},
            {"tokens": 8, "depth": 2, "width": 16, "acc1": 60.0, "gflops": 0.002}]
    (tmp_path / "sweep.json").write_text(json.dumps({"model_sha256": tensors_digest(model.state_dict()), "rows": rows}))
    assert select_configuration(tmp_path / "sweep.json", model, max_gflops=1.0)["acc1"] == 60.0
    other = create_model("adaperceiver_tiny", **tiny_overrides)  # same shapes ...
    with torch.no_grad():
        other.head_fc.bias.add_(0.01)  # ... other weights
    with pytest.raises(ValueError, match=r"sweep\.json.*other weights"):
        select_configuration(tmp_path / "sweep.json", other, max_gflops=1.0)


def test_path_objects_are_accepted_for_path_fields(tmp_path):
    from adaperceiver.training import TrainConfig

    cfg = TrainConfig(out_dir=tmp_path, data_dir=tmp_path / "data", init_from=tmp_path / "m", freeze_backbone=True)
    assert cfg.out_dir == str(tmp_path) and cfg.init_from == str(tmp_path / "m")
    json.dumps(cfg.to_dict())  # still what config.json can hold


# --------------------------------------------------------------------------------------------------
# one input contract: every entry point that takes images accepts and refuses the same tensors
def _entry_points(model):
    from adaperceiver.export import _Logits
    from adaperceiver.reference import reference_forward

    fast = model.for_inference()
    slim = model.slim(8, 2, 16)
    return {"model": model, "model.forward_anytime": lambda x: model.forward_anytime(x).outputs,
            "for_inference": fast, "for_inference.forward_anytime": lambda x: fast.forward_anytime(x).outputs,
            "slim": slim, "onnx_wrapper": _Logits(slim), "reference_forward": lambda x: reference_forward(model, x)[0][-1]}


def _contract_inputs():
    x = torch.randn(2, 1, 28, 28)
    pixels = (x.clamp(-2, 2) * 60 + 128).round()
    return {"fp32": x, "fp16": x.half(), "bf16": x.bfloat16(), "uint8": pixels.to(torch.uint8), "int64": pixels.long(),
            "bool": x > 0, "complex": x.to(torch.complex64), "numpy": x.numpy(), "list": x.tolist(), "3d": x[0],
            "5d": x[None], "3-channels": x.expand(2, 3, 28, 28), "size-30": torch.randn(2, 1, 30, 30),
            "nan": x.masked_fill(x > 1, float("nan")), "inf": x.masked_fill(x > 1, float("inf")), "0-255-floats": pixels}


def _outcome(fn, x):
    try:
        with torch.no_grad():
            fn(x)
    except ValueError as e:
        return str(e)
    return "accepted"


@pytest.mark.parametrize("entry", ["model.forward_anytime", "for_inference", "for_inference.forward_anytime", "slim",
                                   "onnx_wrapper", "reference_forward"])
def test_every_entry_point_keeps_the_models_input_contract(model, entry):
    points = _entry_points(model)
    inputs = _contract_inputs()
    want = {name: _outcome(model, x) for name, x in inputs.items()}
    got = {name: _outcome(points[entry], x) for name, x in inputs.items()}
    assert got == want
    assert [n for n, o in want.items() if o == "accepted"] == ["fp32", "fp16", "bf16"]
    assert re.search(r"uint8.*x\.float\(\) / 255", want["uint8"]) and re.search(r"magnitude 2\d\d", want["0-255-floats"])
    assert "nan" in want["nan"] and "inf" in want["inf"]
