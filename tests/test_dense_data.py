"""Dense datasets on small files the tests write, the offline sources, and the dense tasks in the engine."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from adaperceiver.data.dense import DepthFolder, SegmentationFolder
from adaperceiver.data.dense_io import resize_depth, resize_labels
from adaperceiver.data.visp import find_visp_castel, read_visp_depth, register_depth


def _write_seg_folder(root, names=("a", "b"), size=(6, 8), split=None):
    rng = np.random.default_rng(0)
    img_dir, ann_dir = root / "images", root / "annotations"
    if split:
        img_dir, ann_dir = img_dir / split, ann_dir / split
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    labels = {}
    for n in names:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(img_dir / f"{n}.jpg")
        lab = rng.integers(0, 4, size, dtype=np.uint8)  # 0 = unlabelled, 1..3 classes
        Image.fromarray(lab).save(ann_dir / f"{n}.png")
        labels[n] = lab
    return labels


def test_ade_style_folder_reduces_zero_label(tmp_path):
    labels = _write_seg_folder(tmp_path, split="training")
    ds = SegmentationFolder(tmp_path, "train", num_classes=3)
    assert len(ds) == 2
    x, y = ds[0]
    assert x.shape == (3, 6, 8) and y.shape == (6, 8) and y.dtype == torch.int64
    raw = torch.from_numpy(labels["a"].astype(np.int64))
    torch.testing.assert_close(y, torch.where(raw == 0, torch.full_like(raw, 255), raw - 1))
    # resized: labels nearest (no blended values), image bilinear
    x, y = SegmentationFolder(tmp_path, "train", num_classes=3, size=(12, 16))[1]
    assert x.shape == (3, 12, 16) and set(y.unique().tolist()) <= {0, 1, 2, 255}
    # kept as stored without reduce_zero_label: 0..3 are classes -> 4 classes needed
    with pytest.raises(ValueError, match=r"b\.png|a\.png"):
        SegmentationFolder(tmp_path, "train", num_classes=3, reduce_zero_label=False)[0]
    assert SegmentationFolder(tmp_path, "train", num_classes=4, reduce_zero_label=False)[0][1].max() <= 3


def test_segmentation_folder_errors_name_files(tmp_path):
    _write_seg_folder(tmp_path)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / "lonely.jpg")
    with pytest.raises(ValueError, match="lonely.jpg"):
        SegmentationFolder(tmp_path)
    (tmp_path / "images" / "lonely.jpg").unlink()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "annotations" / "a.png")  # wrong size
    with pytest.raises(ValueError, match="a.png"):
        SegmentationFolder(tmp_path, num_classes=3)[0]
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationFolder(tmp_path, num_classes=3, ignore_index=1)
    with pytest.raises(FileNotFoundError, match="split"):
        SegmentationFolder(tmp_path, "train", num_classes=3)
    with pytest.raises(ValueError, match="split must be"):
        SegmentationFolder(tmp_path, "dev", num_classes=3)


def test_nyu_style_folder_png_millimetres_and_npy_metres(tmp_path):
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    Image.fromarray(np.full((4, 6, 3), 128, np.uint8)).save(tmp_path / "rgb" / "f0.png")
    Image.fromarray(np.full((4, 6, 3), 64, np.uint8)).save(tmp_path / "rgb" / "f1.jpg")
    mm = np.array([[0, 1000, 2500, 65535, 1, 10]] * 4, dtype=np.uint16)
    Image.fromarray(mm).save(tmp_path / "depth" / "f0.png")
    assert Image.open(tmp_path / "depth" / "f0.png").mode.startswith("I")
    metres = np.full((4, 6), 1.5, np.float32)
    metres[0, 0] = np.nan
    np.save(tmp_path / "depth" / "f1.npy", metres)
    ds = DepthFolder(tmp_path)
    x, d = ds[0]
    assert x.shape == (3, 4, 6) and d.shape == (1, 4, 6)
    torch.testing.assert_close(d[0, 0], torch.tensor([0.0, 1.0, 2.5, 65.535, 0.001, 0.01]))
    _, d1 = ds[1]
    assert float(d1[0, 0, 0]) == 0.0 and float(d1[0, 1, 1]) == pytest.approx(1.5)  # NaN -> invalid
    # an 8-bit depth PNG is almost certainly a visualisation, not millimetres
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "depth" / "f0.png")
    with pytest.raises(ValueError, match="16-bit"):
        ds[0]
    (tmp_path / "depth" / "f1.npy").unlink()
    with pytest.raises(ValueError, match="f1.jpg"):
        DepthFolder(tmp_path)


def test_resizing_keeps_labels_and_invalid_depth_apart():
    lab = torch.tensor([[0, 1], [2, 255]])
    assert resize_labels(lab, (4, 4)).unique().tolist() == [0, 1, 2, 255]
    d = torch.tensor([[[1.0, 0.0, 4.0, 4.0], [3.0, 0.0, 4.0, 4.0]]])
    small = resize_depth(d, (1, 2))
    torch.testing.assert_close(small, torch.tensor([[[2.0, 4.0]]]))  # the zeros are not averaged in
    assert resize_depth(torch.zeros(1, 2, 2), (1, 1)).item() == 0.0


def test_register_depth_identity_and_shift(tmp_path):
    depth = np.zeros((4, 6), np.float32)
    depth[1, 2] = 2.0
    cam = (10.0, 10.0, 3.0, 2.0)
    same = register_depth(depth, cam, cam, np.eye(4), (4, 6), (4, 6))
    np.testing.assert_allclose(same, depth)
    shift = np.eye(4)
    shift[0, 3] = 0.2  # 0.2 m to the right at 2 m -> one pixel at focal 10
    moved = register_depth(depth, cam, cam, shift, (4, 6), (4, 6))
    assert moved[1, 3] == pytest.approx(2.0) and moved[1, 2] == 0.0
    raw = np.arange(6, dtype=np.uint16).reshape(2, 3)
    (tmp_path / "d.bin").write_bytes(np.array([2, 3], "<u4").tobytes() + raw.astype("<u2").tobytes())
    np.testing.assert_array_equal(read_visp_depth(tmp_path / "d.bin"), raw)
    (tmp_path / "bad.bin").write_bytes(np.array([5, 5], "<u4").tobytes() + b"\0\0")
    with pytest.raises(ValueError, match="bad.bin"):
        read_visp_depth(tmp_path / "bad.bin")


def test_fashion_mnist_segmentation_labels_are_derived_from_pixels():
    from adaperceiver.data.classification import FASHION_MNIST_DIR
    from adaperceiver.data.dense import FashionMNISTSegmentation

    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    ds = FashionMNISTSegmentation("val", canvas=40, min_items=2, max_items=2, threshold=30, length=5)
    img, lab = ds.compose(3)
    img2, lab2 = ds.compose(3)
    np.testing.assert_array_equal(img, img2)  # deterministic per index
    assert ((lab > 0) <= (img > 30)).all()  # a labelled pixel is a bright pixel
    assert ((img > 30) <= (lab > 0)).all()  # ... and every bright pixel is labelled
    assert set(np.unique(lab)) <= set(range(11)) and len(np.unique(lab)) >= 2
    x, y = ds[3]
    assert x.shape == (1, 40, 40) and y.shape == (40, 40) and len(ds) == 5
    with pytest.raises(ValueError, match="canvas"):
        FashionMNISTSegmentation("val", canvas=20)


def test_visp_castel_frames_if_extracted():
    root = find_visp_castel()
    if root is None:
        pytest.skip("visp-images-data castel frames not extracted (see docs/dense.md)")
    from adaperceiver.data.visp import ViSPCastelDepth

    train, val = ViSPCastelDepth(root, "train", size=(48, 64)), ViSPCastelDepth(root, "val", size=(48, 64))
    assert (len(train), len(val)) == (24, 6)
    x, d = val[0]
    assert x.shape == (1, 48, 64) and d.shape == (1, 48, 64)
    valid = d[d > 0]
    assert 0.3 < valid.numel() / d.numel() < 1.0
    assert 0.1 < float(valid.min()) and float(valid.max()) < 1.5  # a table-top scene, metres


def test_frozen_backbone_run_through_the_engine(tmp_path, tiny_config):
    training = pytest.importorskip("adaperceiver.training")
    from adaperceiver import build_model, save_pretrained
    from adaperceiver.tasks import TaskData, get_task

    clf = build_model(tiny_config(num_classes=3))
    save_pretrained(clf, tmp_path / "clf")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    data = TaskData(torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x[:4], y[:4]), 3, 3, 16,
                    meta={"dense": {"num_classes": 3, "ignore_index": 255}})
    cfg = training.TrainConfig(task="segmentation", init_from=str(tmp_path / "clf"), freeze_backbone=True, epochs=2,
                               batch_size=4, warmup_steps=1, ema_decay=0.0, out_dir=str(tmp_path), name="seg",
                               progress=False, model_overrides={"head.dropout": 0.0})
    trainer = training.Trainer(cfg, get_task("segmentation"), data=data)
    model = trainer.model
    torch.testing.assert_close(model.backbone.blocks[0].attn.q.weight, clf.blocks[0].attn.q.weight)
    torch.testing.assert_close(model.backbone.write.attn.q.weight, clf.write.attn.q.weight)
    enc = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("backbone.blocks")}
    dec = model.head.conv.weight.detach().clone()
    res = trainer.fit()
    assert all(torch.equal(p, enc[n]) for n, p in model.named_parameters() if n in enc)
    assert not torch.equal(model.head.conv.weight, dec)
    assert "val_miou" in res.metrics and get_task("segmentation").sweep_metric == "segmentation"
    from adaperceiver import from_pretrained

    again = from_pretrained(tmp_path / "seg")
    assert type(again).__name__ == "SegmentationModel" and again.head_cfg.num_classes == 3


def test_scene_depth_sets_size_and_occlusion_and_agrees_with_labels():
    from adaperceiver.data.classification import FASHION_MNIST_DIR
    from adaperceiver.data.dense import FashionMNISTScene

    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    one = FashionMNISTScene("val", target="depth", canvas=48, min_items=1, max_items=1, length=20)
    for i in range(20):  # one item: drawn size / z wide, its ink at its depth, the rest the wall
        img, lab, depth = one.compose(i)
        ink = depth < one.background_depth
        z = float(np.unique(depth[ink])[0])
        assert len(np.unique(depth[ink])) == 1 and one.depth_lo <= z <= one.depth_hi
        cols, rows = np.flatnonzero(ink.any(0)), np.flatnonzero(ink.any(1))
        assert max(cols[-1] - cols[0], rows[-1] - rows[0]) + 1 <= round(one.size / z)
        assert ((lab > 0) == ink).all() and ((img > one.threshold) == ink).all()
    many = FashionMNISTScene("val", target="segmentation", canvas=64, min_items=3, max_items=3, length=30)
    depths = FashionMNISTScene("val", target="depth", canvas=64, min_items=3, max_items=3, length=30)
    near_covers_far = 0
    for i in range(30):  # both targets see the same scene; where items overlap the nearer one is visible
        x, lab = many[i]
        x2, d = depths[i]
        assert torch.equal(x, x2) and lab.shape == (64, 64) and d.shape == (1, 64, 64)
        assert torch.equal(lab > 0, d[0] < many.background_depth)
        near_covers_far += int(len(torch.unique(d[d < 4])) >= 2)
    assert near_covers_far > 10
    img, lab, depth = one.compose(3)
    np.testing.assert_array_equal(depth, one.compose(3)[2])  # deterministic per index
    with pytest.raises(ValueError, match="target"):
        FashionMNISTScene("val", target="normals")
    with pytest.raises(ValueError, match="size"):
        FashionMNISTScene("val", size=80)
    with pytest.raises(ValueError, match="background_depth"):
        FashionMNISTScene("val", depth_range=(1.0, 5.0))


def test_vit_segmenter_trains_through_the_engine_and_reloads(tmp_path):
    """The plain-ViT dense baseline: same head as the adaptive model, trained by the same engine, saved and rebuilt."""
    training = pytest.importorskip("adaperceiver.training")
    from adaperceiver import from_pretrained
    from adaperceiver.errors import UserError
    from adaperceiver.evaluation.sweep import evaluate_grid
    from adaperceiver.models.heads import SegmentationHead
    from adaperceiver.models.vit import ViTDense
    from adaperceiver.tasks import TaskData, get_task

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 16, 16, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 0] > 1).long()
    data = TaskData(torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x[:4], y[:4]), 3, 1, 16,
                    meta={"dense": {"num_classes": 3, "ignore_index": 255}})
    cfg = training.TrainConfig(task="segmentation", model="vit_tiny", epochs=2, batch_size=4, warmup_steps=1,
                               ema_decay=0.0, out_dir=str(tmp_path), name="vitseg", progress=False,
                               objective=training.ObjectiveConfig.static(),
                               model_overrides={"patch_size": 4, "embed_dim": 32, "depth": 2, "num_classes": 24})
    trainer = training.Trainer(cfg, get_task("segmentation"), data=data)
    model = trainer.model
    assert isinstance(model.backbone, ViTDense) and isinstance(model.head, SegmentationHead)
    assert model.backbone(x[:2]).shape == (2, 24, 4, 4) and model(x[:2]).shape == (2, 3, 16, 16)
    before = model.head.conv.weight.detach().clone()
    res = trainer.fit()
    assert "val_miou" in res.metrics and not torch.equal(model.head.conv.weight, before)
    again = from_pretrained(tmp_path / "vitseg").eval()
    assert json.loads((tmp_path / "vitseg" / "config.json").read_text())["architecture"] == "vit_segmentation"
    torch.testing.assert_close(again(x[:3]), model.eval()(x[:3]))
    results, *_ = evaluate_grid(again, torch.utils.data.DataLoader(data.val, batch_size=2), "segmentation", progress=False)
    assert [tuple(c) for c in results] == [(16, 2, 32)]  # the one setting a ViT has
    for bad, match in (({"model": "flexivit_tiny"}, "no dense form"), ({"init_from": str(tmp_path / "vitseg")}, "static baseline")):
        with pytest.raises(UserError, match=match):
            training.Trainer(dataclasses.replace(cfg, name="bad", **bad), get_task("segmentation"), data=data)


def test_vit_depth_run_on_scenes_sweeps_with_its_own_metric(tmp_path):
    """The command line end to end on the derived scenes: a ViT depth run records its data config, and sweep
    reads the metric from the model (no --metric)."""
    from adaperceiver.cli import main
    from adaperceiver.data.classification import FASHION_MNIST_DIR

    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    common = ["--dataset", "fashion_mnist_scene", "--image-size", "32", "--train-subset", "16", "--val-subset", "8",
              "--batch-size", "8", "--epochs", "1", "--no-progress", "--out", str(tmp_path)]
    small = ["--set", "patch_size=8", "--set", "embed_dim=32", "--set", "depth=1", "--set", "head.num_bins=8",
             "--set", "head.upsample=1"]
    assert main(["train", "--task", "depth", "--model", "vit_tiny", *small, *common, "--name", "d"]) == 0
    saved = json.loads((tmp_path / "d" / "config.json").read_text())
    assert saved["architecture"] == "vit_depth" and saved["data_config"]["input_size"] == 32
    assert main(["sweep", "--model", str(tmp_path / "d"), "--data", "fashion_mnist_scene_depth", "--limit", "8",
                 "--batch-size", "8", "--latency-batch-sizes", "1", "--no-progress"]) == 0
    rows = json.loads((tmp_path / "d" / "sweep" / "sweep.json").read_text())["rows"]
    assert len(rows) == 1 and "rmse" in rows[0]
