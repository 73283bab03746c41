"""Segmentation / depth heads and task models on the adaptive dense backbone."""

from __future__ import annotations

import json

import pytest
import torch

from adaperceiver import AdaPerceiverDense, from_pretrained, save_pretrained
from adaperceiver.losses import PixelCrossEntropy, SigLoss
from adaperceiver.models.heads import (
    DepthHead,
    DepthHeadConfig,
    DepthModel,
    LayerNorm2d,
    SegmentationHead,
    SegmentationHeadConfig,
    SegmentationModel,
    build_dense_model,
)


@pytest.fixture
def seg_model(tiny_config, loud_init):
    def make(**head):
        m = build_dense_model("segmentation", tiny_config(num_classes=12), {"num_classes": 4, **head})
        return loud_init(m).eval()

    return make


@pytest.fixture
def depth_model(tiny_config, loud_init):
    def make(**head):
        cfg = tiny_config(num_classes=12)
        m = build_dense_model("depth", cfg, {"num_bins": 16, "min_depth": 0.5, "max_depth": 4.0, **head})
        return loud_init(m).eval()

    return make


@pytest.fixture(params=["segmentation", "depth"])
def model(request, depth_model, seg_model):
    return seg_model() if request.param == "segmentation" else depth_model()


def test_every_configuration_runs_and_has_image_resolution(model):
    x = torch.randn(2, 3, 16, 16)
    chans = 4 if isinstance(model, SegmentationModel) else 1
    cfg = model.cfg
    with torch.no_grad():
        for w in cfg.widths:  # every (tokens, depth) read-out at every width, one pass each
            out = model.forward_anytime(x, width=w)
            assert out.outputs.shape == (model.num_blocks, len(cfg.token_grans), 2, chans, 16, 16)
            assert torch.isfinite(out.outputs).all()
        for t, d, w in zip(cfg.token_grans, (1, 2, 3, 3), (16, 24, 32, 5)):  # direct calls, incl. an untrained width
            assert model(x, tokens=t, depth=d, width=w).shape == (2, chans, 16, 16)
        assert model(torch.randn(1, 3, 24, 20)).shape == (1, chans, 24, 20)  # other image sizes


def test_anytime_is_the_head_on_every_readout(model):
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model.forward_anytime(x, width=24)
        assert out.outputs.shape[:3] == (model.num_blocks, len(model.cfg.token_grans), 2)
        for d in out.depths:
            for t in out.tokens:
                ref = model(x, tokens=t, depth=d, width=24)
                torch.testing.assert_close(out.get(t, d), ref, atol=2e-5, rtol=1e-4)
        # configurations really differ (the head does not wash them out)
        assert not torch.allclose(out.get(4, 1), out.get(16, 3), atol=1e-3)


def test_layernorm2d_normalises_channels():
    x = torch.randn(2, 5, 3, 4)
    ln = LayerNorm2d(5, eps=1e-6)
    y = ln(x)
    ref = (x - x.mean(1, keepdim=True)) / (x.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_segmentation_head_upsamples_bilinearly():
    head = SegmentationHead(6, SegmentationHeadConfig(num_classes=3, dropout=0.0)).eval()
    feats = torch.randn(1, 6, 2, 2)
    low = head(feats)
    assert low.shape == (1, 3, 2, 2)
    up = head(feats, (8, 8))
    torch.testing.assert_close(up, torch.nn.functional.interpolate(low, size=(8, 8), mode="bilinear"))


def test_depth_head_is_an_expectation_over_bins(depth_model):
    cfg = DepthHeadConfig(num_bins=5, min_depth=1.0, max_depth=3.0)
    head = DepthHead(4, cfg)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.9]))  # p = (.1,.1,.1,.1,1)/1.4
    out = head.eval()(torch.randn(2, 4, 3, 3), (12, 12))
    expect = (0.1 * (1.0 + 1.5 + 2.0 + 2.5) + 1.0 * 3.0) / 1.4
    assert out.shape == (2, 1, 12, 12)
    torch.testing.assert_close(out, torch.full_like(out, expect))
    # the grid is upsampled 4x before the 3x3 conv
    assert head.train()(torch.randn(1, 4, 3, 3)).shape == (1, 1, 12, 12)
    # eval clamps into [min_depth, max_depth]
    with torch.no_grad():
        d = depth_model().eval()(torch.randn(2, 3, 16, 16))
    assert float(d.min()) >= 0.5 and float(d.max()) <= 4.0


def test_save_and_load_rebuild_the_task_model(tmp_path, model):
    x = torch.randn(2, 3, 16, 16)
    save_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["architecture"] == model.task and meta["model"]["task"] == "dense"
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.head_cfg == model.head_cfg
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, tokens=8, depth=2, width=16), model(x, tokens=8, depth=2, width=16))


def test_unknown_architecture_is_refused(tmp_path, seg_model):
    save_pretrained(seg_model(), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["architecture"] = "nonsense"
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="known"):
        from_pretrained(tmp_path)


def test_frozen_backbone_split_and_gradients(seg_model):
    m = seg_model().train()
    names = {n for n, p in m.named_parameters() if any(p is q for q in m.decoder_parameters())}
    assert any(n.startswith("backbone.query_proj") for n in names)
    assert any(n.startswith("backbone.write") for n in names)
    assert any(n.startswith("head.conv") for n in names)
    assert not any(n.startswith(("backbone.blocks", "backbone.read", "backbone.patch_embed")) for n in names)
    assert len(m.decoder_parameters()) + len(m.backbone_parameters()) == len(list(m.parameters()))
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 4, (2, 16, 16))
    y[0, :4] = 255
    out = m.forward_anytime(x, width=torch.tensor([16, 32]))
    PixelCrossEntropy().per_readout(out.outputs, y).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_depth_training_step_reaches_every_parameter(depth_model):
    m = depth_model().train()
    x, y = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 16, 16) * 3 + 0.5
    y[:, :, :3] = 0  # invalid pixels
    SigLoss().per_readout(m.forward_anytime(x).outputs, y).mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_bad_head_configs_name_allowed_values(seg_model, tiny_config):
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationHeadConfig(num_classes=1)
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationHeadConfig(num_classes=5, ignore_index=3)
    with pytest.raises(ValueError, match="min_depth"):
        DepthHeadConfig(min_depth=2.0, max_depth=1.0)
    with pytest.raises(ValueError, match="allowed"):
        build_dense_model("segmentation", tiny_config(), {"classes": 3})
    with pytest.raises(ValueError, match="allowed"):
        build_dense_model("panoptic", tiny_config())
    with pytest.raises(ValueError, match="AdaPerceiverDense"):
        SegmentationModel(build_dense_model("depth", tiny_config()), SegmentationHeadConfig())
    with pytest.raises(ValueError, match="tokens"):
        seg_model()(torch.randn(1, 3, 16, 16), tokens=999)


def test_classification_config_becomes_a_dense_backbone(tiny_config):
    m = build_dense_model("depth", tiny_config(task="classification", num_classes=5))
    assert isinstance(m, DepthModel) and isinstance(m.backbone, AdaPerceiverDense)
    assert m.cfg.task == "dense" and m.cfg.num_classes == m.cfg.embed_dim


def test_prediction_picture_is_written(tmp_path, depth_model, seg_model):
    from PIL import Image

    from adaperceiver.evaluation.reports import colorize_labels, default_configs, plot_dense_predictions

    lab = torch.tensor([[0, 1], [255, 2]])
    rgb = colorize_labels(lab, 3)
    assert rgb.shape == (2, 2, 3) and (rgb[1, 0] == 0).all() and len({tuple(c) for c in rgb.reshape(-1, 3)}) == 4
    for m, y in ((seg_model(), torch.randint(0, 4, (2, 16, 16))), (depth_model(), torch.rand(2, 1, 16, 16) * 3)):
        assert default_configs(m) == [(4, 1, 16), (16, 3, 32)]
        path = plot_dense_predictions(m, torch.randn(2, 3, 16, 16), y, tmp_path / f"{m.task}.png")
        with Image.open(path) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    with pytest.raises(ValueError, match="SegmentationModel"):
        plot_dense_predictions(torch.nn.Linear(2, 2), torch.randn(1, 3, 16, 16), y, tmp_path / "x.png")


def test_segmentation_sweep_reports_encoder_gflops(tmp_path, tiny_config):
    from torch.utils.data import DataLoader, TensorDataset

    from adaperceiver.evaluation import run_sweep
    from adaperceiver.models.heads import build_dense_model

    model = build_dense_model("segmentation", tiny_config(depth=1, token_grans=(8, 16), widths=(32,)), {"num_classes": 3}).eval()
    data = TensorDataset(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4, 16, 16)))
    rows = run_sweep(model, DataLoader(data, batch_size=4), None, metric="segmentation", latency_batch_sizes=(1,),
                     progress=False)
    assert len(rows) == 2 and all(0 < r["encoder_gflops"] < r["gflops"] for r in rows)
    assert rows[0]["encoder_gflops"] < rows[1]["encoder_gflops"]  # 8 tokens cost less than 16


def test_plain_vit_backbone_takes_the_same_heads_and_reloads(tmp_path):
    from adaperceiver.models.vit import ViTConfig, ViTDense

    vit = ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=24)
    seg = build_dense_model("segmentation", vit, {"num_classes": 5}).eval()
    dep = build_dense_model("depth", vit, {"num_bins": 8, "min_depth": 0.5, "max_depth": 4.0}).eval()
    x = torch.randn(2, 1, 16, 16)
    assert isinstance(seg.backbone, ViTDense) and seg(x).shape == (2, 5, 16, 16)
    d = dep(x)
    assert d.shape == (2, 1, 16, 16) and bool(((d >= 0.5) & (d <= 4.0)).all())
    out = seg.forward_anytime(x).outputs
    assert out.shape == (1, 1, 2, 5, 16, 16)
    torch.testing.assert_close(out[0, 0], seg(x))
    # the backbone is a ViT whose per-patch features are its final tokens through the feature layer
    feats = seg.backbone.forward_features(x)[:, seg.backbone.num_prefix_tokens:]
    torch.testing.assert_close(seg.backbone(x).flatten(2).transpose(1, 2), seg.backbone.head(feats))
    for model, arch in ((seg, "vit_segmentation"), (dep, "vit_depth")):
        save_pretrained(model, tmp_path / arch)
        assert json.loads((tmp_path / arch / "config.json").read_text())["architecture"] == arch
        torch.testing.assert_close(from_pretrained(tmp_path / arch).eval()(x), model(x))
    with pytest.raises(ValueError, match="ViTDense"):
        SegmentationModel(torch.nn.Linear(2, 2), SegmentationHeadConfig(num_classes=3))


def test_plain_vit_dense_model_speaks_the_settings_interface():
    from adaperceiver.models import SettingSpace
    from adaperceiver.models.vit import ViTConfig

    vit = ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=24, mlp_ratio=2.0)
    seg = build_dense_model("segmentation", vit, {"num_classes": 5}).eval()
    assert seg.space == SettingSpace((16,), (2,), (32,)) and seg.configurations() == [(16, 2, 32)]
    assert seg.resolve_width(None, 4) == (None, None)
    assert seg.resolve_width(32, 4) == (64, None) and seg.resolve_width(torch.full((4,), 32), 4) == (64, None)
    assert seg.resolve_tokens(None) == 16 and seg.resolve_depth(2) == 2
    for bad in (lambda: seg.resolve_width(16, 4), lambda: seg.resolve_depth(1), lambda: seg.resolve_tokens(8)):
        with pytest.raises(ValueError, match=r"runs \(tokens, depth, width\) in \[\(16, 2, 32\)\]"):
            bad()
    with pytest.raises(ValueError, match="one width"):
        seg.resolve_width(torch.tensor([32, 16, 32, 32]), 4)
    assert seg.active_parameters(None, None, None) == sum(p.numel() for p in seg.parameters())
