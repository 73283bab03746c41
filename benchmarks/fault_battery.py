"""A battery of bad inputs and faults, kept out of the test suite on purpose (issue 24).

Each case is one thing a careless or hostile user can do. It is classified:

- OK: a clear one-line refusal (exit 2 / ValueError) that names what the case expects, or correct behaviour;
- WEAK: a refusal with a traceback, several lines, a vague message, an internal name, or an absurd value
  accepted;
- BAD: a silent wrong result or lost data.

Run: ``PYTHONPATH=src python benchmarks/fault_battery.py [-v]`` (tiny models, 8x8 digits; about a minute
on 2 CPU cores). It prints one line per non-OK case and the counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from adaperceiver import create_model, save_pretrained
from adaperceiver.cli import main
from adaperceiver.models.data_config import DataConfig

TINY = dict(patch_size=4, embed_dim=16, num_heads=2, depth=2, num_latents=8, token_grans=(4, 8), widths=(8, 16))
INTERNAL = re.compile(r"\bparse_\w+|<function|invalid \w+_\w+ value|Traceback|Original Traceback")
RESULTS: list[tuple[str, str, str]] = []


class ReachedFit(Exception):
    """Training started: the input was accepted."""


def tiny_set():
    return [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}")]


def train_argv(out, *extra, name="run"):
    return ["train", "--dataset", "digits", "--train-subset", "32", "--val-subset", "16", "--batch-size", "16",
            "--epochs", "1", "--warmup-steps", "1", "--no-progress", "--out", str(out), "--name", name,
            *tiny_set(), *extra]


def run_cli(argv, no_fit=True):
    """(exit code or exception, stderr, stdout)."""
    from adaperceiver import training

    err, out = io.StringIO(), io.StringIO()
    saved = training.Trainer.fit

    def boom(self, *a, **k):
        raise ReachedFit

    if no_fit:
        training.Trainer.fit = boom
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("default")
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
    except ReachedFit:
        code = "fit"
    except BaseException as e:  # noqa: BLE001 - everything that escapes is a finding
        code = e
    finally:
        training.Trainer.fit = saved
    return code, err.getvalue(), out.getvalue()


def record(case, verdict, why=""):
    RESULTS.append((case, verdict, why))


def cli_case(case, argv, must=(), accepted="WEAK", no_fit=True, check=None):
    """A bad command line: must be refused with one line matching every regex in ``must``.

    ``accepted``: the verdict when the command is accepted (training starts / exit 0); None: acceptance is right.
    ``check(code, err, out) -> verdict | None`` overrides.
    """
    code, err, out = run_cli(argv, no_fit)
    if check is not None:
        v = check(code, err, out)
        if v is not None:
            record(case, *v) if isinstance(v, tuple) else record(case, v)
            return
    if isinstance(code, BaseException):
        record(case, "WEAK", f"escaped {type(code).__name__}: {str(code)[:120]}")
        return
    if code in ("fit", 0, None):
        if accepted is None:
            record(case, "OK")
        else:
            record(case, accepted, f"accepted ({code})")
        return
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    if code != 2 or len(lines) != 1:
        record(case, "WEAK", f"exit {code}, {len(lines)} lines: {err.strip()[:160]!r}")
        return
    line = lines[0]
    if INTERNAL.search(line):
        record(case, "WEAK", f"internal name: {line[:160]}")
        return
    miss = [m for m in must if not re.search(m, line, re.I)]
    if miss:
        record(case, "WEAK", f"vague (no {miss}): {line[:160]}")
        return
    record(case, "OK")


def api_case(case, fn, must=(), accepted="WEAK"):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn()
    except (ValueError, FileNotFoundError) as e:  # the API's user errors (the CLI prints both as one line)
        msg = str(e)
        if len(msg.strip().splitlines()) != 1:
            record(case, "WEAK", f"multi-line: {msg[:160]!r}")
        elif [m for m in must if not re.search(m, msg, re.I)]:
            record(case, "WEAK", f"vague: {msg[:160]}")
        else:
            record(case, "OK")
        return
    except Exception as e:  # noqa: BLE001
        record(case, "WEAK", f"{type(e).__name__}: {str(e)[:160]}")
        return
    if accepted is None:
        record(case, "OK")
    elif callable(accepted):
        v = accepted(result)
        record(case, *v) if isinstance(v, tuple) else record(case, v)
    else:
        record(case, accepted, "accepted")


# --------------------------------------------------------------------------------------------------
def _with_data_config(model):
    """The stand-ins carry a data config like a model trained by 0.2 (so loading them prints no derivation note)."""
    c = model.cfg
    model.data_config = DataConfig(c.img_size, c.in_chans, (0.5,) * c.in_chans, (0.5,) * c.in_chans)
    return model


def setup(root: Path) -> dict:
    torch.manual_seed(0)
    files = {}
    files["tiny"] = root / "tiny"
    save_pretrained(_with_data_config(create_model("adaperceiver_tiny", **TINY)), files["tiny"])
    files["digits_model"] = root / "digits_model"
    save_pretrained(_with_data_config(create_model("adaperceiver_tiny", **{**TINY, "img_size": 8})), files["digits_model"])
    files["rgb_model"] = root / "rgb_model"
    save_pretrained(_with_data_config(create_model("adaperceiver_tiny", **{**TINY, "img_size": 8, "in_chans": 3})), files["rgb_model"])
    files["five_class"] = root / "five_class"
    save_pretrained(_with_data_config(create_model("adaperceiver_tiny", **{**TINY, "img_size": 8, "num_classes": 5})), files["five_class"])
    files["big_img"] = root / "big_img"
    save_pretrained(_with_data_config(create_model("adaperceiver_tiny", **{**TINY, "img_size": 16})), files["big_img"])
    # a segmentation and a depth model (dense task)
    code, err, _ = run_cli(["train", "--task", "segmentation", "--dataset", "fashion_mnist_seg", "--train-subset", "16",
                            "--val-subset", "8", "--batch-size", "8", "--max-steps", "1", "--no-progress", "--out",
                            str(root), "--name", "segmentation", *tiny_set()], no_fit=False)
    assert code in (0, None), err
    files["segmentation"] = root / "segmentation"
    from adaperceiver import AdaPerceiverConfig
    from adaperceiver.models.heads import build_dense_model

    files["depth"] = root / "depth"
    save_pretrained(_with_data_config(build_dense_model("depth", AdaPerceiverConfig(**{**TINY, "img_size": 8, "in_chans": 1}))),
                    files["depth"])
    # a broken image folder
    from PIL import Image

    for split, n in (("train", 8), ("val", 4)):
        for cls in ("a", "b"):
            (root / "folder" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(root / "folder" / split / cls / f"{i}.png")
    (root / "folder" / "train" / "a" / "5.png").write_bytes(b"\x89PNG garbage")
    files["folder"] = root / "folder"
    # a stopped run to resume
    run_out = root / "runs"
    code, err, _ = run_cli(train_argv(run_out, "--max-steps", "1", "--checkpoint-every", "1"), no_fit=False)
    assert code in (0, None), err
    files["run_out"] = run_out
    code, err, _ = run_cli(train_argv(run_out, "--max-steps", "2", "--checkpoint-every", "1", name="other"), no_fit=False)
    assert code in (0, None), err
    return files


# --------------------------------------------------------------------------------------------------
def float_option_cases(tmp: Path):
    bad = ("nan", "inf", "-1", "abc")
    absurd = {
        "--lr": ["1e300", "50"], "--min-lr": ["1e300", "1"], "--weight-decay": ["1e300", "100"], "--grad-clip": ["inf"],
        "--ema-decay": ["-0.5"], "--label-smoothing": ["0.99"], "--temperature": ["1e-300", "1e300"],
        "--kd-weight": ["1e300"], "--ce-weight": ["1e300"], "--self-distill-weight": ["1e300"],
        "--full-token-weight": ["1e300", "1e-300"],
    }
    for opt, extra in absurd.items():
        name = opt.lstrip("-").replace("-", "[-_]")
        if opt == "--temperature":
            name = r"temperature"
        for v in bad:
            cli_case(f"train {opt} {v}", train_argv(tmp, opt, v), must=(name,))
        for v in extra:
            cli_case(f"train {opt} {v}", train_argv(tmp, opt, v), must=(name,))
    # --set floats of the model
    for field, values in {"rope_theta": ["1e-300", "1e300", "NaN", "Infinity", "0.5"], "ffn_ratio": ["1e-300", "Infinity", "NaN", "1e3"],
                          "ls_init": ["Infinity", "NaN", "1e300"], "latent_std": ["Infinity", "NaN", "1e300"],
                          "latent_pos_std": ["Infinity", "NaN", "1e300"]}.items():
        for v in values:
            cli_case(f"train --set {field}={v}", train_argv(tmp, "--set", f"{field}={v}"), must=(field,))
    cli_case("train min_lr > lr", train_argv(tmp, "--lr", "1e-3", "--min-lr", "1e-2"), must=(r"min[-_]lr",))
    cli_case("train ce 0 kd 0 (nothing to learn)", train_argv(tmp, "--ce-weight", "0", "--kd-weight", "0"),
             must=(r"ce[-_]weight",))


def int_option_cases(tmp: Path):
    rows = {"--epochs": ["-1", "abc", "1.5", "0"], "--batch-size": ["0", "-3"], "--warmup-steps": ["-1", "abc"],
            "--keep-checkpoints": ["0"], "--log-every": ["0"], "--checkpoint-every": ["-1"], "--max-steps": ["0"],
            "--num-workers": ["-1"], "--accum-steps": ["0", "3"], "--image-size": ["0", "-8"], "--seed": ["-1", "x"],
            "--eval-every": ["-1"], "--train-subset": ["0", "1.5"], "--crop-padding": ["-1"]}
    for opt, values in rows.items():
        name = opt.lstrip("-").replace("-", "[-_]")
        for v in values:
            cli_case(f"train {opt} {v}", train_argv(tmp, opt, v), must=(name,))


def list_option_cases(tmp: Path, f: dict):
    for v in ("a,b,c", "1,2", "1,2,3,4", ",", "8,2,-16"):
        cli_case(f"train --static {v}", train_argv(tmp, "--static", v), must=(r"static",))
    for v in ("a", "1,-1", "nan,1", "0,0"):
        cli_case(f"train --token-weights {v}", train_argv(tmp, "--token-weights", v), must=(r"token[-_]weights",))
    for v in ("a,b", "0", "8,x"):
        cli_case(f"train --widths {v}", train_argv(tmp, "--widths", v), must=(r"widths",))
    for v in ("a,b", "0", "-1", "1,,x", "1.5"):
        cli_case(f"demo --latency-batch-sizes {v}", ["demo", "--dataset", "digits", "--out", str(tmp),
                                                      "--latency-batch-sizes", v], must=(r"latency[-_]batch[-_]sizes",))
        cli_case(f"sweep --latency-batch-sizes {v}", ["sweep", "--model", str(f["tiny"]), "--latency-batch-sizes", v],
                 must=(r"latency[-_]batch[-_]sizes",))
    for v in ("1,2", "a,b,c", "8,2", "1,2,3,4"):
        cli_case(f"demo --baselines {v}", ["demo", "--dataset", "digits", "--out", str(tmp), "--baselines", v],
                 must=(r"baselines",))
        cli_case(f"dense-visualize --config {v}", ["dense-visualize", "--model", str(f["tiny"]), "--config", v],
                 must=(r"--config",))
    for v in ("a", "0"):
        cli_case(f"policy eval --latency-batch-sizes {v}", ["policy", "eval", "--model", str(f["tiny"]), "--out", str(tmp),
                                                            "--latency-batch-sizes", v], must=(r"latency[-_]batch[-_]sizes",))
    for v in ("8,0", "a,b", "8,-1"):
        cli_case(f"teacher --channels {v}", ["teacher", "--channels", v, "--dataset", "digits", "--out", str(tmp)],
                 must=(r"channels",))
    for v in ("x", "nan", "-1"):
        cli_case(f"policy train --lams {v}", ["policy", "train", "--model", str(f["digits_model"]), "--dataset", "digits",
                                               "--out", str(tmp / "pol"), "--lams", v], must=(r"lams?\b",))
        cli_case(f"policy eval --taus {v}", ["policy", "eval", "--model", str(f["digits_model"]), "--dataset", "digits",
                                              "--out", str(tmp / "pol"), "--taus", v], must=(r"taus?\b",))


def other_command_cases(tmp: Path, f: dict):
    tiny, dm = str(f["tiny"]), str(f["digits_model"])
    rows = [
        ("sweep --batch-size 0", ["sweep", "--model", tiny, "--batch-size", "0"], (r"batch[-_]size",)),
        ("sweep --limit 0", ["sweep", "--model", tiny, "--limit", "0"], (r"limit",)),
        ("sweep --model missing", ["sweep", "--model", str(tmp / "nowhere")], (r"nowhere",)),
        ("sweep --data unknown", ["sweep", "--model", dm, "--data", "nodata"], (r"nodata",)),
        ("sweep --split dev", ["sweep", "--model", dm, "--data", "digits", "--split", "dev"], (r"split", r"dev")),
        ("sweep wrong image size", ["sweep", "--model", tiny, "--data", "digits", "--limit", "4"], (r"8|28",)),
        ("budget --max-gflops -1", ["budget", "--sweep", str(tmp), "--model", tiny, "--max-gflops", "-1"], (r"max[-_]gflops",)),
        ("budget --max-gflops nan", ["budget", "--sweep", str(tmp), "--model", tiny, "--max-gflops", "nan"], (r"max[-_]gflops",)),
        ("budget --max-ms 0", ["budget", "--sweep", str(tmp), "--model", tiny, "--max-ms", "0"], (r"max[-_]ms",)),
        ("budget no budget", ["budget", "--sweep", str(tmp), "--model", tiny], (r"max[-_]ms|max[-_]gflops",)),
        ("budget --batch-size 0", ["budget", "--sweep", str(tmp), "--model", tiny, "--max-gflops", "1", "--batch-size", "0"],
         (r"batch[-_]size",)),
        ("export --tokens 0", ["export", "--model", tiny, "--tokens", "0", "--depth", "1", "--width", "8", "--out", str(tmp / "e")],
         (r"tokens",)),
        ("export --depth 99", ["export", "--model", tiny, "--tokens", "4", "--depth", "99", "--width", "8", "--out", str(tmp / "e")],
         (r"depth",)),
        ("export --width 0", ["export", "--model", tiny, "--tokens", "4", "--depth", "1", "--width", "0", "--out", str(tmp / "e")],
         (r"width",)),
        ("export --width 999", ["export", "--model", tiny, "--tokens", "4", "--depth", "1", "--width", "999", "--out", str(tmp / "e")],
         (r"width",)),
        ("export model missing", ["export", "--model", str(tmp / "nowhere"), "--tokens", "4", "--depth", "1", "--width", "8",
                                  "--out", str(tmp / "e")], (r"nowhere",)),
        ("teacher --depth 0", ["teacher", "--arch", "vit", "--depth", "0", "--dataset", "digits", "--out", str(tmp)], (r"depth",)),
        ("teacher --mlp-ratio nan", ["teacher", "--arch", "vit", "--mlp-ratio", "nan", "--dataset", "digits", "--out", str(tmp)],
         (r"mlp[-_]ratio",)),
        ("policy train --lr 0", ["policy", "train", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"), "--lr", "0"],
         (r"\blr\b",)),
        ("policy train --lr nan", ["policy", "train", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"), "--lr", "nan"],
         (r"\blr\b",)),
        ("policy train --scale 0", ["policy", "train", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"), "--scale", "0"],
         (r"scale",)),
        ("policy train --entropy -1", ["policy", "train", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"),
                                        "--entropy", "-1"], (r"entropy",)),
        ("policy train --entropy nan", ["policy", "train", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"),
                                         "--entropy", "nan"], (r"entropy",)),
        ("policy train --epochs 0", ["policy", "train", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"),
                                      "--epochs", "0"], (r"epochs",)),
        ("policy train --batch-size 0", ["policy", "train", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"),
                                          "--batch-size", "0"], (r"batch[-_]size",)),
        ("policy train --limit 0", ["policy", "train", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"),
                                     "--limit", "0"], (r"limit",)),
        ("policy eval --latency-images 0", ["policy", "eval", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"),
                                             "--latency-images", "0"], (r"latency[-_]images",)),
        ("policy eval --taus 2", ["policy", "eval", "--model", dm, "--dataset", "digits", "--out", str(tmp / "p"),
                                   "--taus", "2"], (r"taus?\b",)),
        ("dense-visualize --num 0", ["dense-visualize", "--model", tiny, "--num", "0"], (r"num",)),
        ("convert missing file", ["convert", str(tmp / "nowhere.safetensors"), "--config", str(tmp / "c.json"),
                                  "--out", str(tmp / "c")], (r"nowhere|c\.json",)),
    ]
    for case, argv, must in rows:
        cli_case(case, argv, must=must, no_fit=True)


# --------------------------------------------------------------------------------------------------
def input_contract_cases():
    from adaperceiver.export import _Logits

    torch.manual_seed(0)
    model = create_model("adaperceiver_tiny", **TINY).eval()  # 28x28 grey
    entry = {"model": lambda x: model(x), "for_inference": lambda x: fast(x),
             "for_inference.anytime": lambda x: fast.forward_anytime(x).outputs,
             "slim": lambda x: slim(x), "onnx-wrapper": lambda x: _Logits(slim)(x)}
    fast = model.for_inference()
    slim = model.slim(8, 2, 16)
    x = torch.randn(2, 1, 28, 28)
    pixels = (x.clamp(-2, 2) * 60 + 128).round()
    inputs = {
        "uint8": (lambda: pixels.to(torch.uint8), (r"uint8",), "BAD"),
        "int64": (lambda: pixels.long(), (r"int64",), "BAD"),
        "bool": (lambda: x > 0, (r"bool",), "BAD"),
        "numpy": (lambda: x.numpy(), (r"numpy|ndarray",), "WEAK"),
        "list": (lambda: x.tolist(), (r"list",), "WEAK"),
        "3d": (lambda: x[0], (r"\(B, C, H, W\)|shape",), "WEAK"),
        "5d": (lambda: x[None], (r"\(B, C, H, W\)|shape",), "WEAK"),
        "3 channels": (lambda: x.expand(2, 3, 28, 28), (r"channel",), "WEAK"),
        "size 30": (lambda: torch.randn(2, 1, 30, 30), (r"patch|multiple",), "WEAK"),
        "nan": (lambda: torch.full_like(x, float("nan")), (r"nan|finite",), "WEAK"),
        "inf": (lambda: x.masked_fill(x > 1, float("inf")), (r"inf|finite",), "WEAK"),
        "0-255 floats": (lambda: pixels, (r"255|range|normalis",), "WEAK"),
        "complex": (lambda: x.to(torch.complex64), (r"complex",), "WEAK"),
    }
    for ep, fn in entry.items():
        for name, (make, must, sev) in inputs.items():
            api_case(f"input {name} -> {ep}", lambda fn=fn, make=make: fn(make()), must=must, accepted=sev)
        api_case(f"input fp16 -> {ep}", lambda fn=fn: fn(x.half()), accepted=None)


def config_api_cases():
    from adaperceiver import AdaPerceiverConfig
    from adaperceiver.training import ObjectiveConfig, TrainConfig

    base = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, num_heads=4, depth=2, num_latents=16,
                token_grans=(4, 16), widths=(16, 32))
    for field, v in [("rope_theta", 1e-300), ("rope_theta", float("inf")), ("rope_theta", float("nan")),
                     ("ffn_ratio", float("inf")), ("ls_init", float("nan")), ("latent_std", float("inf")),
                     ("latent_std", float("nan")), ("ffn_ratio", 1e-9)]:
        api_case(f"AdaPerceiverConfig({field}={v})", lambda field=field, v=v: AdaPerceiverConfig(**{**base, field: v}),
                 must=(field,))
    for field, v in [("lr", float("inf")), ("lr", 1e9), ("min_lr", float("inf")), ("weight_decay", float("nan")),
                     ("weight_decay", 1e9), ("ema_decay", float("nan")), ("grad_clip", float("nan"))]:
        api_case(f"TrainConfig({field}={v})", lambda field=field, v=v: TrainConfig(**{field: v}), must=(field,))
    for field, v in [("kd_temperature", float("inf")), ("kd_temperature", 1e-300), ("ce_weight", float("inf")),
                     ("label_smoothing", float("nan")), ("token_weights", (float("inf"), 1.0)),
                     ("full_token_weight", float("nan")), ("kd_weight", float("inf"))]:
        api_case(f"ObjectiveConfig({field}={v})", lambda field=field, v=v: ObjectiveConfig(**{field: v}), must=(field,))


# --------------------------------------------------------------------------------------------------
def resume_cases(tmp: Path, f: dict):
    """Each case resumes a private copy of the stopped run after an edit; data must not leak between runs."""

    def fresh():
        d = Path(tempfile.mkdtemp(dir=tmp))
        shutil.copytree(f["run_out"] / "run", d / "run")
        shutil.copytree(f["run_out"] / "other", d / "other")
        return d

    def pointer(d, target):
        (d / "run" / "checkpoints" / "last.json").write_text(json.dumps({"dir": target, "step": 2}))

    def escape_check(d):
        def check(code, err, out):
            own = sorted(p.name for p in (d / "run" / "checkpoints").glob("step_*"))
            other = sorted(p.name for p in (d / "other" / "checkpoints").glob("step_*"))
            if code in (0, None):
                return ("BAD", f"resumed from outside; run checkpoints now {own}, other {other}")
            if isinstance(code, BaseException):
                return ("WEAK", f"escaped {type(code).__name__}")
            if other != ["step_00000001", "step_00000002"]:
                return ("BAD", f"the other run lost checkpoints: {other}")
            lines = [ln for ln in err.splitlines() if ln.strip()]
            if len(lines) != 1 or not re.search(r"outside|escape|not inside|inside", lines[0], re.I):
                return ("WEAK", f"not named as escaping: {err.strip()[:160]}")
            return "OK"
        return check

    d = fresh()
    pointer(d, "../../other/checkpoints/step_00000002")
    cli_case("resume: relative ../other_run pointer", train_argv(d, "--resume", "--max-steps", "2"), no_fit=False,
             check=escape_check(d))
    d = fresh()
    pointer(d, str((d / "other" / "checkpoints" / "step_00000002").resolve()))
    cli_case("resume: absolute pointer to another run", train_argv(d, "--resume", "--max-steps", "2"), no_fit=False,
             check=escape_check(d))
    d = fresh()
    (d / "run" / "checkpoints" / "step_00000002").symlink_to(d / "other" / "checkpoints" / "step_00000002")
    pointer(d, "step_00000002")
    cli_case("resume: symlinked step dir", train_argv(d, "--resume", "--max-steps", "2"), no_fit=False,
             check=escape_check(d))
    d = fresh()
    shutil.rmtree(d / "run" / "checkpoints")
    (d / "run" / "checkpoints").symlink_to(d / "other" / "checkpoints")
    cli_case("resume: symlinked checkpoints dir", train_argv(d, "--resume", "--max-steps", "3"), no_fit=False,
             check=escape_check(d))
    d = fresh()
    pointer(d, "/")
    cli_case("resume: pointer to /", train_argv(d, "--resume"), no_fit=False, must=(r"last\.json",), accepted="BAD")
    d = fresh()
    pointer(d, "step_00000009")
    cli_case("resume: pointer to a missing step", train_argv(d, "--resume"), no_fit=False, must=(r"step_00000009",),
             accepted="BAD")
    d = fresh()
    (d / "run" / "checkpoints" / "last.json").write_text(json.dumps({"dir": 5, "step": 1}))
    cli_case("resume: pointer dir not a string", train_argv(d, "--resume"), no_fit=False, must=(r"last\.json",),
             accepted="BAD")

    # rotation must never delete files it did not write: a user's file named like a checkpoint
    d = fresh()
    keep = d / "run" / "checkpoints" / "step_00000000_notes"  # sorts first: the oldest by name
    keep.mkdir()
    (keep / "mine.txt").write_text("user data")

    def rot_check(code, err, out):
        if not (keep / "mine.txt").is_file():
            return ("BAD", "rotation deleted a user folder")
        return "OK" if code in (0, None) else ("WEAK", f"exit {code}: {err.strip()[:160]}")

    cli_case("resume: rotation vs a user folder in checkpoints/", train_argv(d, "--resume", "--max-steps", "2"),
             no_fit=False, check=rot_check)
    # metrics of later steps than the checkpoint: truncated silently?
    d = fresh()
    metrics = d / "run" / "metrics.csv"
    metrics.write_text("step,epoch,split,loss\n1,0.5,train,2.0\n7,3.5,train,1.0\n")

    def metrics_check(code, err, out):
        if code not in (0, None):
            return ("WEAK", f"exit {code}: {err.strip()[:120]}")
        said = re.search(r"metrics|rows", err + out, re.I)
        return "OK" if said else ("BAD", "metrics rows after the checkpoint dropped without a word")

    cli_case("resume: metrics rows beyond the checkpoint", train_argv(d, "--resume", "--max-steps", "2"), no_fit=False,
             check=metrics_check)


def convert_cases(tmp: Path):
    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official"
    ref = json.loads((fixture / "config.json").read_text())["classification"]
    sections = {k: v for k, v in ref.items() if k.endswith("Config")}

    def conv(case, edit, must, sev="WEAK"):
        cfg = json.loads(json.dumps(sections))
        for sec, (k, v) in edit:
            cfg[sec][k] = v
        path = tmp / f"conv_{len(RESULTS)}.json"
        path.write_text(json.dumps(cfg))
        cli_case(case, ["convert", str(fixture / "classification.safetensors"), "--config", str(path),
                        "--out", str(tmp / f"c{len(RESULTS)}")], must=must, accepted=sev, no_fit=True,
                 check=warn_check(must, sev))

    def warn_check(must, sev):
        def check(code, err, out):
            if code in (0, None):  # accepted: fine only when it warned naming the field
                lines = [ln for ln in err.splitlines() if ln.strip()]
                if any(re.search(must[0], ln) and "warn" in ln.lower() for ln in lines) and all(
                        "Traceback" not in ln for ln in lines):
                    return "OK"
                return (sev, "accepted silently")
            return None
        return check

    A, C = "AdaPercevierConfig", "ClassificationConfig"
    conv("convert num_heads 8 (weights: ?)", [(A, ("num_heads", 8))], (r"num_heads",))
    conv("convert num_heads 2", [(A, ("num_heads", 2))], (r"num_heads",))
    conv("convert grans 8,24,32", [(A, ("mask_token_grans", [8, 24, 32]))], (r"token_grans|mask_token_grans|granularit",))
    conv("convert rope_theta 100", [(A, ("rope_theta", 100))], (r"rope_theta",))
    conv("convert max_latent_tokens 16", [(A, ("max_latent_tokens", 16))], (r"max_latent_tokens|num_latents",))
    conv("convert ffn_ratio 3", [(A, ("ffn_ratio", 3.0))], (r"ffn_ratio|hidden",))
    conv("convert embed_dim 32", [(A, ("embed_dim", 32))], (r"embed_dim",))
    conv("convert depth 3", [(A, ("depth", 3))], (r"depth",))
    conv("convert num_classes 7", [(C, ("num_classes", 7))], (r"num_classes",))
    conv("convert img_size 64", [(C, ("img_size", 64))], (r"img_size",))
    conv("convert patch_size 8", [(C, ("patch_size", 8))], (r"patch_size",))
    conv("convert in_channels 1", [(C, ("in_channels", 1))], (r"in_chans|in_channels",))
    conv("convert qkv_bias false", [(A, ("qkv_bias", False))], (r"qkv|bias",))
    conv("convert use_output_ffn true", [(C, ("use_output_ffn", True))], (r"head|output_ffn",))
    conv("convert ls_init null", [(A, ("ls_init_values", None))], (r"ls|gamma|layer",))
    conv("convert rope_theta 1e-300", [(A, ("rope_theta", 1e-300))], (r"rope_theta",))


def distill_cases(tmp: Path, f: dict):
    base = ["--dataset", "digits", "--train-subset", "32", "--val-subset", "16", "--batch-size", "16", "--out", str(tmp),
            "--no-progress", *tiny_set()]
    for name in ("segmentation", "depth"):
        cli_case(f"distill teacher {name}", ["distill", "--teacher", str(f[name]), *base], must=(name, r"classif"))
    cli_case("distill teacher 5 classes", ["distill", "--teacher", str(f["five_class"]), *base], must=(r"\b5\b", r"\b10\b"))
    cli_case("distill teacher 3 channels", ["distill", "--teacher", str(f["rgb_model"]), *base], must=(r"channel",))
    cli_case("distill teacher 28 px", ["distill", "--teacher", str(f["tiny"]), *base], must=(r"\b28\b|size", r"\b8x8\b"))
    cli_case("distill teacher 16 px", ["distill", "--teacher", str(f["big_img"]), *base], must=(r"\b16\b|size", r"\b8x8\b"))
    cli_case("distill teacher a file", ["distill", "--teacher", str(f["tiny"] / "config.json"), *base], must=(r"config\.json",))
    cli_case("distill --feature-weight -1", ["distill", "--teacher", str(f["digits_model"]), "--feature-weight", "-1", *base],
             must=(r"feature[-_]weight",))
    cli_case("distill --feature-weight nan", ["distill", "--teacher", str(f["digits_model"]), "--feature-weight", "nan", *base],
             must=(r"feature[-_]weight",))
    cli_case("distill teacher efficientnet-lite0:abc", ["distill", "--teacher", "efficientnet-lite0:abc", *base],
             must=(r"efficientnet",))


def worker_cases(tmp: Path, f: dict):
    for workers in ("0", "1", "2"):
        cli_case(f"train broken image --num-workers {workers}",
                 ["train", "--dataset", "imagefolder", "--data-dir", str(f["folder"]), "--image-size", "8",
                  "--batch-size", "4", "--epochs", "1", "--no-progress", "--num-workers", workers, "--out", str(tmp),
                  "--name", f"w{workers}", *tiny_set(), "--set", "in_chans=1"],
                 must=(r"5\.png", r"item|index|unreadable"), no_fit=False)  # a worker error names the item; the folder scan, the file count


def more_cases(tmp: Path, f: dict):
    """API calls and files the table above does not cover."""
    from adaperceiver import from_pretrained
    from adaperceiver.data import get_dataset
    from adaperceiver.export import export_onnx

    torch.manual_seed(0)
    model = create_model("adaperceiver_tiny", **TINY).eval()
    x = torch.randn(2, 1, 28, 28)
    calls = {
        "tokens=0": (lambda: model(x, tokens=0), (r"tokens",)),
        "tokens=999": (lambda: model(x, tokens=999), (r"tokens",)),
        "tokens=-1": (lambda: model(x, tokens=-1), (r"tokens",)),
        "depth=99": (lambda: model(x, depth=99), (r"depth",)),
        "depth=-1": (lambda: model(x, depth=-1), (r"depth",)),
        "depth=1.5": (lambda: model(x, depth=1.5), (r"depth",)),
        "width=0": (lambda: model(x, width=0), (r"width",)),
        "width=999": (lambda: model(x, width=999), (r"width",)),
        "width list of 3 for batch 2": (lambda: model(x, width=[8, 16, 16]), (r"width|entries",)),
        "width='16'": (lambda: model(x, width="16"), (r"width",)),
        "anytime depths=[0]": (lambda: model.forward_anytime(x, depths=[0]), (r"depth",)),
        "anytime depths=[9]": (lambda: model.forward_anytime(x, depths=[9]), (r"depth",)),
        "early exit threshold nan": (lambda: model.forward_early_exit(x, threshold=float("nan")), (r"threshold",)),
        "early exit threshold -1": (lambda: model.forward_early_exit(x, threshold=-1.0), (r"threshold",)),
        "for_inference dtype int8": (lambda: model.for_inference(dtype=torch.int8), (r"dtype",)),
        "for_inference dtype 'fp64'": (lambda: model.for_inference(dtype="fp64"), (r"dtype",)),
        "for_inference width list": (lambda: model.for_inference()(x, width=[8, 16]), (r"width",)),
        "slim tokens 0": (lambda: model.slim(0, 1, 8), (r"tokens",)),
        "slim depth 9": (lambda: model.slim(4, 9, 8), (r"depth",)),
        "slim width 0": (lambda: model.slim(4, 1, 0), (r"width",)),
        "from_pretrained a file": (lambda: from_pretrained(f["tiny"] / "config.json"), (r"config\.json",)),
        "from_pretrained missing": (lambda: from_pretrained(tmp / "nowhere"), (r"nowhere",)),
        "from_pretrained empty dir": (lambda: from_pretrained(tmp), (r"config\.json",)),
        "get_dataset unknown": (lambda: get_dataset("mnist2", "train"), (r"mnist2",)),
        "get_dataset imagefolder missing root": (lambda: get_dataset("imagefolder", "train", root=tmp / "nowhere"), (r"nowhere",)),
        "get_dataset image_size 0": (lambda: get_dataset("digits", "train", image_size=0), (r"image_size",)),
    }
    for name, (fn, must) in calls.items():
        api_case(f"api {name}", fn, must=must)
    # an adaptive model whose num_latents is its last granularity exports at its full configuration: right answer
    api_case("api export_onnx of an adaptive model (full configuration)", lambda: export_onnx(model, tmp / "a.onnx"),
             accepted=None)
    # files given to commands
    tiny = str(f["tiny"])
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "junk.json").write_text("not json")
    rows = [
        ("train --dataset imagefolder without --data-dir", train_argv(tmp, "--dataset", "imagefolder"), (r"data[-_]dir|root",)),
        ("train --data-dir nowhere", train_argv(tmp, "--dataset", "imagefolder", "--data-dir", str(tmp / "nowhere")), (r"nowhere",)),
        ("train --init-from a file", train_argv(tmp, "--init-from", str(f["tiny"] / "config.json")), (r"config\.json",)),
        ("train --init-from an empty dir", train_argv(tmp, "--init-from", str(tmp / "empty")), (r"empty",)),
        ("train --init-from a dense model", train_argv(tmp, "--init-from", str(f["segmentation"])), (r"segmentation",)),
        ("train --model unknown", train_argv(tmp, "--model", "resnet50"), (r"resnet50",)),
        ("train --export best", train_argv(tmp, "--export", "best"), (r"export",)),
        ("train --set token_grans=[8,4]", train_argv(tmp, "--set", "token_grans=[8,4]"), (r"token_grans",)),
        ("train --set widths=[999]", train_argv(tmp, "--set", "widths=[999]"), (r"width",)),
        ("train --set num_heads=3", train_argv(tmp, "--set", "num_heads=3"), (r"heads|embed_dim",)),
        ("train --set patch_size=3", train_argv(tmp, "--set", "patch_size=3"), (r"patch_size",)),
        ("train --set img_size=30", train_argv(tmp, "--set", "img_size=30"), (r"img_size|size",)),
        ("train --set novalue", train_argv(tmp, "--set", "novalue"), (r"--set",)),
        ("train --static 99,1,8", train_argv(tmp, "--static", "99,1,8"), (r"tokens|99",)),
        ("train --static 4,1,999", train_argv(tmp, "--static", "4,1,999"), (r"width|999",)),
        ("train --widths 999", train_argv(tmp, "--widths", "999"), (r"widths|999",)),
        ("train --task segmentation on digits", train_argv(tmp, "--task", "segmentation"), (r"segmentation|digits",)),
        ("train --accum-steps 3 (does not divide 16)", train_argv(tmp, "--accum-steps", "3"), (r"accum",)),
        ("sweep --model a file", ["sweep", "--model", str(f["tiny"] / "config.json")], (r"config\.json",)),
        ("sweep --data imagefolder:nowhere", ["sweep", "--model", tiny, "--data", f"imagefolder:{tmp / 'nowhere'}"], (r"nowhere",)),
        ("budget --sweep junk", ["budget", "--sweep", str(tmp / "junk.json"), "--model", tiny, "--max-gflops", "1"], (r"junk\.json",)),
        ("budget --threads 0", ["budget", "--sweep", str(tmp / "junk.json"), "--model", tiny, "--max-gflops", "1",
                                "--threads", "0"], (r"threads",)),
        ("export --dtype int8", ["export", "--model", tiny, "--tokens", "4", "--depth", "1", "--width", "8", "--out",
                                 str(tmp / "e2"), "--dtype", "int8"], (r"dtype",)),
        ("policy eval --policies nowhere", ["policy", "eval", "--model", tiny, "--out", str(tmp / "pe"), "--policies",
                                            str(tmp / "nowhere")], (r"nowhere",)),
        ("convert --config junk", ["convert", str(tmp / "junk.json"), "--config", str(tmp / "junk.json"), "--out",
                                   str(tmp / "cv")], (r"junk\.json",)),
        ("convert --section missing", ["convert", str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official"
                                                      / "classification.safetensors"), "--config",
                                       str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official" / "config.json"),
                                       "--section", "nosuch", "--out", str(tmp / "cv")], (r"nosuch",)),
        ("distill --teacher-cache a file", ["distill", "--teacher", str(f["digits_model"]), "--teacher-cache",
                                            str(tmp / "junk.json"), "--dataset", "digits", "--train-subset", "32",
                                            "--batch-size", "16", "--out", str(tmp), *tiny_set()], (r"junk\.json|cache",)),
    ]
    for case, argv, must in rows:
        cli_case(case, argv, must=must)


def main_battery(verbose: bool) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        f = setup(root)
        scratch = root / "scratch"
        scratch.mkdir()
        sections = [(float_option_cases, (scratch,)), (int_option_cases, (scratch,)), (list_option_cases, (scratch, f)),
                    (other_command_cases, (scratch, f)), (input_contract_cases, ()), (config_api_cases, ()),
                    (resume_cases, (root, f)), (convert_cases, (scratch,)), (distill_cases, (scratch, f)),
                    (worker_cases, (scratch, f)), (more_cases, (scratch, f))]
        for fn, args in sections:
            t0, n0 = time.perf_counter(), len(RESULTS)
            fn(*args)
            print(f"# {fn.__name__}: {len(RESULTS) - n0} cases, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    counts = {k: sum(1 for r in RESULTS if r[1] == k) for k in ("OK", "WEAK", "BAD")}
    for case, verdict, why in RESULTS:
        if verdict != "OK" or verbose:
            print(f"{verdict:4} {case}: {why}")
    print(f"{len(RESULTS)} cases: {counts['OK']} OK, {counts['WEAK']} WEAK, {counts['BAD']} BAD")
    return counts


if __name__ == "__main__":
    try:
        main_battery("-v" in sys.argv)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
