"""Dense metrics and losses against values computed by hand on tiny arrays."""

from __future__ import annotations

import math

import pytest
import torch

from adaperceiver.evaluation.metrics import DepthMetric, SegmentationMetric, depth_metric, segmentation_metric
from adaperceiver.losses import PixelCrossEntropy, SigLoss, pixel_cross_entropy, sig_loss


def test_miou_and_pixel_accuracy_by_hand():
    # gt / pred over 8 labelled pixels (one ignored) and 3 classes
    gt = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 0, 2, 1, 0]])
    m = SegmentationMetric(3, ignore_index=255)
    m.update(pred.view(1, 1, 9), gt.view(1, 1, 9))
    # class 0: tp 2 (pixels 0, 8), fp 1 (pixel 5), fn 1 (pixel 1) -> 2/4
    # class 1: tp 2, fp 1 (pixel 1), fn 0 -> 2/3 ; class 2: tp 2, fp 0, fn 1 -> 2/3
    out = m.compute()
    assert out["miou"] == pytest.approx(100 * (0.5 + 2 / 3 + 2 / 3) / 3)
    assert out["pixel_acc"] == pytest.approx(100 * 6 / 8)
    assert out["mean_acc"] == pytest.approx(100 * (2 / 3 + 1 + 2 / 3) / 3)
    torch.testing.assert_close(m.confusion, torch.tensor([[2, 1, 0], [0, 2, 0], [1, 0, 2]]))


def test_miou_accumulates_over_batches_and_accepts_logits():
    gt = torch.tensor([[[0, 1], [1, 1]]])
    logits = torch.zeros(1, 4, 2, 2)
    logits[0, 1] = 1.0  # predicts class 1 everywhere
    m = SegmentationMetric(4)
    m.update(logits, gt)
    m.update(torch.tensor([[[0, 0], [3, 3]]]), torch.tensor([[[0, 0], [3, 255]]]))
    # confusion: gt0->p1 once, gt1->p1 three times, gt0->p0 twice, gt3->p3 once
    # IoU0 = 2/3, IoU1 = 3/4, IoU3 = 1; class 2 never appears -> left out of the mean
    out = m.compute()
    assert out["miou"] == pytest.approx(100 * (2 / 3 + 3 / 4 + 1) / 3)
    assert out["pixel_acc"] == pytest.approx(100 * 6 / 7)
    assert math.isnan(float(m.per_class_iou()[2]))


def test_segmentation_metric_errors():
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMetric(3, ignore_index=1)
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetric(1)
    m = SegmentationMetric(3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="classes"):
        m.update(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_depth_metrics_by_hand():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])  # last pixel invalid
    pred = torch.tensor([[[1.0, 3.0], [2.0, 9.0]]])
    m = DepthMetric()
    m.update(pred, gt)
    out = m.compute()
    assert out["rmse"] == pytest.approx(math.sqrt((0 + 1 + 4) / 3))
    assert out["abs_rel"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert out["log10"] == pytest.approx((0 + math.log10(1.5) + math.log10(2)) / 3)
    # ratios max(p/g, g/p): 1, 1.5, 2
    assert out["delta1"] == pytest.approx(1 / 3)
    assert out["delta2"] == pytest.approx(2 / 3)  # 1.5 < 1.5625
    assert out["delta3"] == pytest.approx(2 / 3)  # 2 > 1.953


def test_depth_metrics_average_per_image_and_respect_max_depth():
    gt = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 20.0]]]])
    pred = torch.tensor([[[[2.0, 2.0]]], [[[2.0, 5.0]]]])
    m = DepthMetric(max_depth=10.0)
    m.update(pred, gt)
    out = m.compute()
    # image 1: rmse 1, absrel 1; image 2: only the 2.0 pixel is valid, exact
    assert out["rmse"] == pytest.approx(0.5)
    assert out["abs_rel"] == pytest.approx(0.5)
    assert out["delta1"] == pytest.approx(0.5)
    empty = DepthMetric()
    empty.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert math.isnan(empty.compute()["rmse"])


def test_pixel_cross_entropy_ignores_and_matches_manual():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 2)
    target = torch.tensor([[[0, 1], [255, 2]], [[2, 255], [255, 1]]])
    keep = target != 255
    logp = logits.log_softmax(1).permute(0, 2, 3, 1)[keep]
    manual = -logp[torch.arange(logp.shape[0]), target[keep]].mean()
    assert pixel_cross_entropy(logits, target) == pytest.approx(float(manual), rel=1e-5)
    # read-out axes: one loss per read-out
    grid = torch.stack([logits, 2 * logits]).unsqueeze(1)  # (2, 1, B, K, H, W)
    per = PixelCrossEntropy().per_readout(grid, target)
    assert per.shape == (2, 1)
    assert per[0, 0] == pytest.approx(float(manual), rel=1e-5)
    # no labelled pixel: 0, still differentiable
    x = logits.clone().requires_grad_(True)
    z = pixel_cross_entropy(x, torch.full_like(target, 255))
    z.backward()
    assert float(z.detach()) == 0.0 and x.grad is not None
    with pytest.raises(ValueError, match="outside"):
        pixel_cross_entropy(logits, torch.full_like(target, 5))


def test_sig_loss_scale_invariance_and_value():
    gt = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]]])
    # a pure scale error costs sqrt((1 - lambda) * log(s)^2) and nothing for lambda = 1
    pred = 3.0 * gt.clamp_min(0.5)
    assert sig_loss(pred, gt, variance_focus=1.0) == pytest.approx(math.sqrt(1e-6), abs=1e-6)
    assert sig_loss(pred, gt, variance_focus=0.85) == pytest.approx(math.sqrt(0.15) * math.log(3.0), rel=1e-5)
    # hand value: g = log(p/gt) on the 3 valid pixels
    pred2 = torch.tensor([[[[1.0, 4.0], [4.0, 7.0]]]])
    g = torch.tensor([0.0, math.log(2.0), 0.0])
    expect = math.sqrt(float((g ** 2).mean() - 0.85 * g.mean() ** 2))
    assert sig_loss(pred2, gt) == pytest.approx(expect, rel=1e-5)
    # max_depth drops the 4 m pixel
    g2 = torch.tensor([0.0, math.log(2.0)])
    expect2 = math.sqrt(float((g2 ** 2).mean() - 0.85 * g2.mean() ** 2))
    assert SigLoss(max_depth=3.0)(pred2, gt) == pytest.approx(expect2, rel=1e-5)
    assert SigLoss().per_readout(pred2.expand(2, 3, 1, 1, 2, 2), gt).shape == (2, 3)


def test_sweep_factories_read_the_model_head(tiny_config):
    from adaperceiver.models.heads import build_dense_model

    seg = build_dense_model("segmentation", tiny_config(), {"num_classes": 4, "ignore_index": -100})
    acc = segmentation_metric(seg)
    assert (acc.num_classes, acc.ignore_index, acc.primary, acc.higher_is_better) == (4, -100, "miou", True)
    dep = depth_metric(build_dense_model("depth", tiny_config(), {"max_depth": 5.0}))
    assert (dep.max_depth, dep.primary, dep.higher_is_better) == (5.0, "rmse", False)
    with pytest.raises(ValueError, match="allowed"):
        segmentation_metric(seg, bogus=1)


def test_metrics_are_registered_for_sweeps():
    evaluation = pytest.importorskip("adaperceiver.evaluation")
    assert evaluation.get_metric("segmentation") is segmentation_metric
    assert evaluation.get_metric("depth") is depth_metric
