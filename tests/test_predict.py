"""Data configs travel with models; predict / sweep read images the way the model needs them."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaperceiver import DataConfig, Predictor, build_model, from_pretrained, predict, save_pretrained
from adaperceiver.cli import main
from adaperceiver.data.transforms import eval_transform, prepare_tensor

OFFICIAL = Path(__file__).resolve().parent / "fixtures" / "official"
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_v0.1" / "run"
GREY28 = DataConfig(28, 1, (0.286,), (0.353,), "bilinear", 1.0, "squash", ("a", "b", "c"))


@pytest.fixture
def grey_model(tmp_path, tiny_config, loud_init):
    """A 28 px grey 3-class model with a data config, saved."""
    model = loud_init(build_model(tiny_config(img_size=28, in_chans=1, num_classes=3, patch_size=4, depth=2,
                                             token_grans=(8, 16), widths=(16, 32)))).eval()
    model.data_config = GREY28
    save_pretrained(model, tmp_path / "grey")
    return tmp_path / "grey"


def _photos(root: Path, n: int = 2, size=(96, 64), classes=("a", "b", "c"), ext: str = "jpg") -> Path:
    """A folder of RGB images, ``n`` per class."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.{ext}")
    return root


def test_data_config_round_trips_and_old_checkpoints_derive_one(grey_model, tmp_path, caplog):
    meta = json.loads((grey_model / "config.json").read_text())
    assert meta["data_config"]["class_names"] == ["a", "b", "c"]
    assert from_pretrained(grey_model).data_config == GREY28
    # an old checkpoint: the data config comes from what config.json records, with one warning line
    with caplog.at_level(logging.WARNING, logger="adaperceiver"):
        legacy = from_pretrained(LEGACY)
    assert legacy.data_config.mean == (0.286,) and legacy.data_config.input_size == 28
    assert len(caplog.records) == 1 and "assumed 1 ch, 28 px" in caplog.text and "fashion_mnist" in caplog.text
    # a data config that contradicts the model is refused naming both
    meta["data_config"]["in_chans"], meta["data_config"]["mean"], meta["data_config"]["std"] = 3, [0.5] * 3, [0.5] * 3
    bad = tmp_path / "bad"
    shutil.copytree(grey_model, bad)
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="3-channel 28 px images but the model takes 1-channel 28 px"):
        from_pretrained(bad)


def test_predictor_takes_paths_pil_and_tensors_alike(grey_model, tmp_path):
    model = from_pretrained(grey_model)
    folder = _photos(tmp_path / "photos", n=1, ext="png")  # PNG: no reduced JPEG decoding, so equal to PIL input
    path = folder / "a" / "0.png"
    pil = Image.open(path)
    u8 = torch.from_numpy(np.array(pil.convert("L"))).unsqueeze(0)
    by_path, by_pil, by_u8, by_float = (predict(model, x, k=3) for x in (path, pil, u8, u8.float() / 255))
    assert by_path[0].source == str(path) and by_pil[0].source == "image 0"
    assert by_path[0].labels == by_pil[0].labels and set(by_path[0].labels) == {"a", "b", "c"}
    np.testing.assert_allclose(by_path[0].probs, by_pil[0].probs, atol=1e-6)
    np.testing.assert_allclose(by_u8[0].probs, by_float[0].probs, atol=1e-5)
    assert sum(by_path[0].probs) == pytest.approx(1.0, abs=1e-5)
    # a smaller configuration gives other probabilities; k is capped at the class count
    p = Predictor(model)
    assert p(path, k=10, tokens=8, depth=1)[0].probs != by_path[0].probs and len(p(path, k=10)[0].labels) == 3
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*normalised"):
        p(u8.float())
    with pytest.raises(ValueError, match=r"C = 1 or 3, got shape \(1, 2, 8, 8\)"):
        p(torch.zeros(1, 2, 8, 8))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*notes.txt"):
        p([path, tmp_path / "notes.txt"])


def test_tensor_path_matches_the_pil_path():
    cfg = DataConfig(16, 3, (0.5,) * 3, (0.25,) * 3, "bilinear", 16 / 20, "center")
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    a = eval_transform(cfg)(img)
    b = prepare_tensor(torch.from_numpy(np.array(img)).permute(2, 0, 1), cfg)[0]
    assert a.shape == b.shape == (3, 16, 16)
    assert (a - b).abs().mean() < 0.08  # two antialiased bilinear resamplers: close, not equal


def test_converted_reference_checkpoint_carries_its_data_config_and_predicts(tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class{i}\n" for i in range(10)))
    out = tmp_path / "conv"
    assert main(["convert", str(OFFICIAL / "classification.safetensors"), "--config", str(OFFICIAL / "config.json"),
                 "--section", "classification", "--class-names", str(names), "--out", str(out)]) == 0
    dc = from_pretrained(out).data_config
    assert dc.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073)) and dc.crop_pct == pytest.approx(0.875)
    assert (dc.input_size, dc.resize_size, dc.interpolation) == (32, 37, "bilinear") and dc.class_names[3] == "class3"
    photo = _photos(tmp_path / "p", n=1, size=(300, 200))
    capsys.readouterr()
    assert main(["predict", "--model", str(out), str(photo), "--top-k", "2", "--output", str(tmp_path / "p.json")]) == 0
    cap = capsys.readouterr()
    assert "3 image(s) prepared as 3 ch, 32 px (resize 37 -> centre crop 32, bilinear)" in cap.err
    got = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert len(got) == 3 and all(len(p["labels"]) == 2 and p["labels"][0].startswith("class") for p in got)
    names.write_text("cat\ndog\n")
    assert main(["convert", str(OFFICIAL / "classification.safetensors"), "--config", str(OFFICIAL / "config.json"),
                 "--section", "classification", "--class-names", str(names), "--out", str(tmp_path / "c2")]) == 2
    assert "names 2 classes but the checkpoint has 10 outputs" in capsys.readouterr().err


def test_folder_with_other_class_names_is_refused(grey_model, tmp_path, cli_error, capsys):
    folder = _photos(tmp_path / "f", classes=("cat", "dog", "eel"))
    line = cli_error(["sweep", "--model", str(grey_model), "--data", f"imagefolder:{folder}", "--out",
                      str(tmp_path / "s"), "--latency-batch-sizes", "1", "--no-progress"], capsys)
    assert "['cat', 'dog', 'eel']" in line and "['a', 'b', 'c']" in line and "--allow-mismatch" in line


def test_large_rgb_photos_are_prepared_for_a_28px_grey_model(grey_model, tmp_path, capsys):
    folder = _photos(tmp_path / "f", n=2, size=(200, 150))
    code = main(["sweep", "--model", str(grey_model), "--data", f"imagefolder:{folder}", "--out", str(tmp_path / "s"),
                 "--latency-batch-sizes", "", "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "as the model's data config says" in ln]
    assert len(lines) == 1 and "(RGB 200x150) are read as grey (converted), resized to 28 px" in lines[0]
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert rows and all(0 <= r["acc1"] <= 100 for r in rows)


def test_builtin_set_that_contradicts_the_model_is_refused(grey_model, tmp_path, cli_error, capsys):
    line = cli_error(["sweep", "--model", str(grey_model), "--data", "digits", "--out", str(tmp_path / "s"),
                      "--no-progress"], capsys)
    assert "dataset 'digits' gives images prepared as 1 ch, 28 px" in line and "mean [0.3]" in line
    assert "the model expects 1 ch, 28 px (squashed to 28, bilinear), mean [0.286]" in line


def test_predict_command_reads_folders_and_stdin(grey_model, tmp_path, capsys, monkeypatch):
    import io

    folder = _photos(tmp_path / "f", n=1)
    listing = "\n".join(str(p) for p in sorted(folder.rglob("*.jpg"))) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(listing))
    assert main(["predict", "--model", str(grey_model), "-", "--output", str(tmp_path / "p.csv"), "--top-k", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image", "top-1"] and len(table) == 4
    csv = (tmp_path / "p.csv").read_text().splitlines()
    assert csv[0] == "image,top1,p1" and len(csv) == 4
    assert main(["predict", "--model", str(grey_model), str(tmp_path / "missing.jpg")]) == 2
    assert "no image file or folder at" in capsys.readouterr().err


def test_fine_tuning_on_a_single_folder_keeps_the_pretrained_preparation(grey_model, tmp_path, capsys):
    folder = _photos(tmp_path / "mine", n=5, size=(40, 30), classes=("x", "y"))
    argv = ["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--val-fraction", "0.2", "--init-from",
            str(grey_model), "--model", "adaperceiver_tiny", "--set", "in_chans=1", "--set", "depth=2",
            "--set", "num_latents=16", "--set", "token_grans=[8,16]", "--set", "widths=[16,32]", "--set",
            "embed_dim=32", "--set", "num_heads=4", "--set", "ffn_ratio=2.57", "--set", "ls_init=0.5",
            "--batch-size", "4", "--epochs", "1", "--no-progress", "--out", str(tmp_path), "--name", "ft"]
    assert main(argv) == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "ft" / "config.json").read_text())
    dc = meta["data_config"]  # the pretrained model's size / channels / normalisation, the folder's classes
    assert (dc["input_size"], dc["in_chans"], dc["mean"], dc["crop_mode"]) == (28, 1, [0.286], "squash")
    assert dc["class_names"] == ["x", "y"]
    split = meta["image_folder"]
    assert split["train"]["num_images"] == 8 and split["val"]["num_images"] == 2 and split["val"]["val_fraction"] == 0.2


def test_early_exit_prediction_is_the_models_early_exit(grey_model, tmp_path, cli_error, capsys):
    """``exit_confidence`` gives each image the logits of ``forward_early_exit``: at 0 every image leaves after
    block 1 (the depth-1 output), at 1 none leaves early (the full output)."""
    from adaperceiver import from_pretrained
    from adaperceiver.evaluation.predict import Predictor

    model = from_pretrained(grey_model)
    folder = _photos(tmp_path / "f", n=2)
    pred = Predictor(model)
    x, _ = pred.prepare(sorted(folder.rglob("*.jpg")))
    with torch.no_grad():
        for tau in (0.0, 0.6, 1.0):
            torch.testing.assert_close(pred._run(x, None, None, None, tau), model.forward_early_exit(x, tau).logits)
        torch.testing.assert_close(pred._run(x, None, None, None, 0.0), model(x, depth=1))
        torch.testing.assert_close(pred._run(x, None, None, None, 1.0), model(x))
    with pytest.raises(ValueError, match="exit_confidence or depth, not both"):
        pred._run(x, None, 1, None, 0.5)
    assert main(["predict", "--model", str(grey_model), str(folder), "--exit-confidence", "0.5", "--top-k", "1"]) == 0
    assert "early exit at confidence 0.5" in capsys.readouterr().err
    line = cli_error(["predict", "--model", str(grey_model), str(folder), "--exit-confidence", "1.5"], capsys)
    assert "--exit-confidence must be a probability in [0, 1], got 1.5" in line
    line = cli_error(["predict", "--model", str(grey_model), str(folder), "--exit-confidence", "0.5", "--depth", "1"], capsys)
    assert "--exit-confidence chooses the depth per image" in line
