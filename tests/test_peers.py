"""The peers of docs/paper_claims.md: the plain ViT family presets and FlexiViT (PI-resize, settings, sweep)."""

from __future__ import annotations

import pytest
import torch

from adaperceiver.evaluation.cost import measure_flops
from adaperceiver.evaluation.sweep import run_sweep
from adaperceiver.models import create_model
from adaperceiver.models.flexivit import FlexiViT, FlexiViTConfig, pi_resize, resize_patch
from adaperceiver.models.vit import StaticViT


@pytest.mark.parametrize("p,q", [(4, 7), (4, 14), (3, 8), (8, 16)])
def test_pi_resize_keeps_every_patch_token_when_upsampling(p, q):
    """The defining property: <x, w> == <resize(x), PI-resize(w)> for any patch x and kernel w (q >= p)."""
    g = torch.Generator().manual_seed(p * 100 + q)
    x = torch.randn(32, 2, p, p, generator=g, dtype=torch.float64)
    w = torch.randn(5, 2, p, p, generator=g, dtype=torch.float64)
    direct = torch.einsum("nchw,ochw->no", x, w)
    resized = torch.einsum("nchw,ochw->no", resize_patch(x, q), pi_resize(w, q))
    torch.testing.assert_close(resized, direct, rtol=1e-9, atol=1e-9)
    # not a tautology: plain bilinear resizing of the kernel does not keep the tokens
    naive = torch.nn.functional.interpolate(w, size=(q, q), mode="bilinear", align_corners=False)
    assert (torch.einsum("nchw,ochw->no", resize_patch(x, q), naive) - direct).abs().max() > 0.1


def test_pi_resize_in_float32_and_gradients_reach_the_stored_kernel():
    w = torch.randn(3, 1, 4, 4, requires_grad=True)
    x = torch.randn(6, 1, 4, 4)
    out = torch.einsum("nchw,ochw->no", resize_patch(x, 7), pi_resize(w, 7))
    torch.testing.assert_close(out, torch.einsum("nchw,ochw->no", x, w), rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


# the documented FLOPs of the family (presets.py docstrings), per 28 px image
VIT_FAMILY_MFLOPS = {"vit_tiny": 15.768832, "vit_tiny_x2": 33.483648, "vit_tiny_x4": 66.814848}


@pytest.mark.parametrize("name", sorted(VIT_FAMILY_MFLOPS))
def test_vit_family_builds_at_its_documented_flops(name):
    model = create_model(name)
    assert isinstance(model, StaticViT)
    assert measure_flops(model) / 1e6 == pytest.approx(VIT_FAMILY_MFLOPS[name], rel=1e-6)


def test_vit_family_doubles_in_flops():
    f = [VIT_FAMILY_MFLOPS[n] for n in ("vit_tiny", "vit_tiny_x2", "vit_tiny_x4")]
    assert 1.8 < f[1] / f[0] < 2.3 and 3.6 < f[2] / f[0] < 4.6


def test_flexivit_serves_each_patch_size_with_its_token_count():
    torch.manual_seed(0)
    model = create_model("flexivit_tiny", img_size=28).eval()
    assert isinstance(model, FlexiViT)
    assert model.configurations() == [(4, 4, 64), (16, 4, 64), (49, 4, 64)]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for tokens, patch in ((4, 14), (16, 7), (49, 4)):
            torch.testing.assert_close(model(x, tokens=tokens), model(x, patch_size=patch))
            assert model.forward_features(x, patch).shape == (2, tokens + 1, 64)
        assert (model(x, patch_size=14) - model(x, patch_size=4)).abs().max() > 1e-4
        flops = [measure_flops(model, (t, None, None)) for t in (4, 16, 49)]
    assert flops[0] < flops[1] < flops[2]
    with pytest.raises(ValueError, match="patch sizes"):
        model(x, patch_size=5)
    with pytest.raises(ValueError, match=r"runs \(tokens, depth, width\)"):
        model(x, tokens=10)
    with pytest.raises(ValueError, match="do not divide"):
        FlexiViTConfig(img_size=28, patch_size=4, patch_sizes=(4, 6))


def test_flexivit_draws_its_patch_size_per_training_step():
    torch.manual_seed(0)
    model = create_model("flexivit_tiny", embed_dim=16, depth=1, num_heads=2).train()
    seen = {model.forward_anytime(torch.randn(2, 1, 28, 28)).tokens for _ in range(12)}
    assert seen == {(4,), (16,), (49,)}


@pytest.mark.parametrize("name", ["vit_tiny", "flexivit_tiny"])
def test_peers_run_through_the_sweep(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,))
    rows = run_sweep(model, [(x[:4], y[:4]), (x[4:], y[4:])], tmp_path, latency_batch_sizes=(2,), progress=False,
                     latency_warmup=0, latency_repeats=1)
    assert [r["tokens"] for r in rows] == [t for t, _, _ in model.configurations()]
    with torch.no_grad():
        model.eval()
        for r in rows:
            want = 100.0 * float((model(x, tokens=r["tokens"]).argmax(-1) == y).float().mean())
            assert r["acc1"] == pytest.approx(want)
            assert r["gflops"] * 1e9 == measure_flops(model, (r["tokens"], None, None))
    assert (tmp_path / "sweep.csv").exists()


def test_flexivit_trains_with_the_library_trainer_and_reloads(tmp_path):
    from adaperceiver.checkpoint import from_pretrained
    from adaperceiver.data.classification import TensorImageDataset
    from adaperceiver.tasks import get_task
    from adaperceiver.training import ObjectiveConfig, TrainConfig, Trainer
    from adaperceiver.training.config import TaskData

    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 3, (16,))
    ds = TensorImageDataset(x, y, classes=("a", "b", "c"))
    model = create_model("flexivit_tiny", embed_dim=16, depth=1, num_heads=2, num_classes=3)
    cfg = TrainConfig(model="flexivit_tiny", epochs=1, batch_size=8, warmup_steps=0, ema_decay=0.0, augment=False,
                      objective=ObjectiveConfig.static(), out_dir=str(tmp_path), name="f", progress=False)
    result = Trainer(cfg, get_task("classification"), data=TaskData(ds, ds, 3, 1, 28), model=model).fit()
    assert result.step == 2 and "val_acc1" in result.metrics
    loaded = from_pretrained(result.run_dir).eval()
    assert isinstance(loaded, FlexiViT)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, patch_size=7), result.model.eval()(x, patch_size=7))


def test_peer_presets_refuse_fields_they_do_not_have():
    with pytest.raises(ValueError, match=r"baseline built from ViTConfig: it has no field\(s\) \['num_latents'\]"):
        create_model("vit_tiny", num_latents=8)


@pytest.mark.parametrize("name", ["vit_tiny", "flexivit_tiny"])
def test_peer_for_inference_runs_each_setting_in_its_dtype_and_compiled(name):
    """A peer is timed in the adaptive model's fast mode: a bf16 copy called like the peer, float32 out,
    one compiled runner per setting (aot_eager here: the graph, without inductor's minutes)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    fast = model.for_inference(torch.bfloat16)
    assert next(fast.model.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    for s in model.configurations():
        out = fast(x, *s)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, model(x, *s), atol=0.1, rtol=0.05)
    compiled = model.for_inference(torch.float32, compile=True, backend="aot_eager")
    for s in model.configurations():
        torch.testing.assert_close(compiled(x, *s), model(x, *s), atol=1e-5, rtol=1e-5)
    assert len(compiled._runners) == len(model.configurations())
    with pytest.raises(ValueError, match="runs"):
        fast(x, 5, None, None)
    with pytest.raises(ValueError, match="x has dtype torch.uint8"):  # the input contract, as the peer itself says
        fast((x * 50).clamp(0, 255).to(torch.uint8), *model.configurations()[0])


def test_flexivit_at_setting_is_a_plain_vit_with_the_same_outputs():
    torch.manual_seed(0)
    model = create_model("flexivit_tiny", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    for t, d, w in model.configurations():
        static = model.at_setting(t, d, w)
        assert type(static) is StaticViT and static.patch_embed.proj.kernel_size[0] == model.patch_size_of(t)
        torch.testing.assert_close(static(x), model(x, tokens=t), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vit_tiny", "flexivit_tiny"])
def test_adaperceiver_train_trains_a_peer_with_the_static_objective(name, tmp_path, cli_error, capsys):
    """``adaperceiver train --model vit_tiny`` runs the same trainer with the one-setting objective, and the
    run directory loads and sweeps like an adaptive one."""
    pytest.importorskip("sklearn")
    from adaperceiver.checkpoint import from_pretrained
    from adaperceiver.cli import main

    common = ["--dataset", "digits", "--epochs", "1", "--batch-size", "32", "--max-steps", "2", "--warmup-steps", "1",
              "--out", str(tmp_path), "--no-progress", "--val-subset", "32", "--set", "patch_size=2"]
    if name.startswith("flexivit"):
        common += ["--set", "patch_sizes=[2,4]"]  # 8 px digits
    assert main(["train", "--model", name, "--name", "p", *common]) == 0
    model = from_pretrained(tmp_path / "p")
    assert type(model) is (FlexiViT if name.startswith("flexivit") else StaticViT)
    assert model.data_config is not None and model.data_config.input_size == model.cfg.img_size
    assert main(["sweep", "--model", str(tmp_path / "p"), "--data", "digits", "--limit", "32", "--out",
                 str(tmp_path / "sw"), "--latency-batch-sizes", "1", "--no-progress"]) == 0
    assert len((tmp_path / "sw" / "sweep.csv").read_text().splitlines()) == 1 + len(model.configurations())
    line = cli_error(["train", "--model", name, "--name", "q", "--static", "8,1,32", *common], capsys)
    assert f"model {name!r} is a static baseline" in line, line


def test_flexivit_cost_is_counted_as_deployed_not_with_the_per_call_kernel_resize():
    from adaperceiver.evaluation.cost import count_flops

    model = create_model("flexivit_tiny", num_classes=10, in_chans=1).eval()
    x = torch.zeros(1, 1, 28, 28)
    coarse = (4, None, None)  # patch 14: the 4x4 kernel is PI-resized to 14x14 on every call of the model
    per_call = count_flops(model, x, tokens=4)
    deployed = measure_flops(model, coarse)
    assert deployed == count_flops(model.at_setting(*coarse), x) < per_call
    assert per_call - deployed >= 2 * 64 * 16 * 196  # the resize matmul: (64 x 16) @ (16 x 196)
