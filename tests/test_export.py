"""Slim export: a static model with physically sliced weights that equals the adaptive model."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from adaperceiver import build_model, from_pretrained, save_pretrained
from adaperceiver.cli import main
from adaperceiver.models.slim import slim
from adaperceiver.models.util import num_parameters

ATOL = 1e-5


@pytest.fixture(params=["classification", "dense", "classification+options", "dense+options"])
def model(request, loud_init, variant_config):
    return loud_init(build_model(variant_config(request.param))).eval()


@pytest.mark.parametrize("tokens,depth,width", [(16, 3, 32), (12, 2, 24), (4, 1, 16), (10, 3, 20)])
def test_slim_equals_adaptive(model, tokens, depth, width):
    x = torch.randn(3, 3, 16, 16)
    small = slim(model, tokens, depth, width)
    assert small.cfg.num_latents == tokens and small.num_blocks == depth
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x, tokens=tokens, depth=depth, width=width), atol=ATOL, rtol=0)
        if model.cfg.task == "dense":  # other image sizes too
            x24 = torch.randn(2, 3, 24, 24)
            torch.testing.assert_close(small(x24), model(x24, tokens=tokens, depth=depth, width=width), atol=ATOL, rtol=0)


def test_slim_is_physically_smaller(model, tmp_path):
    small = slim(model, 8, 2, 16)
    h = int(16 * model.cfg.ffn_ratio)
    assert all(b.mlp.fc1.weight.shape[0] == h and b.mlp.fc2.weight.shape[1] == h for b in small.blocks)
    assert num_parameters(small) < num_parameters(slim(model, 8, 3, 32)) == num_parameters(model)
    save_pretrained(model, tmp_path / "full")
    save_pretrained(small, tmp_path / "slim")
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("slim") < 0.8 * size("full")
    # the slim directory reloads as a normal model with the same outputs
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path / "slim")(x), small(x), atol=ATOL, rtol=0)


def test_slim_does_not_alias_weights(model):
    small = slim(model, 8, 2, 16)
    with torch.no_grad():
        small.blocks[0].mlp.fc1.weight.zero_()
    assert model.blocks[0].mlp.fc1.weight.abs().sum() > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(tokens=0, depth=1, width=16), "tokens must be an int"),
    (dict(tokens=8, depth=4, width=16), r"depth must be an int in \[1, 3\]"),
    (dict(tokens=8, depth=1, width=64), "width must be an int"),
    (dict(tokens=20, depth=1, width=16), "up to the last granularity"),
])
def test_slim_bad_configuration(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        slim(model, **kwargs)


def test_slim_compiles_without_graph_breaks(loud_init, tiny_config):
    """fullgraph dynamo capture + AOT autograd (fast); the inductor run is in the slow test below."""
    model = loud_init(build_model(tiny_config())).eval()
    small = slim(model, 12, 2, 24)
    torch._dynamo.reset()
    compiled = torch.compile(small, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        for b in (3, 5):
            x = torch.randn(b, 3, 16, 16)
            torch.testing.assert_close(compiled(x), model(x, tokens=12, depth=2, width=24), atol=ATOL, rtol=0)


@pytest.mark.skipif(not os.environ.get("ADAPERCEIVER_SLOW_TESTS"), reason="inductor compile takes ~30 s on 2 cores; "
                    "set ADAPERCEIVER_SLOW_TESTS=1")
def test_slim_compiles_with_inductor(loud_init, tiny_config):
    model = loud_init(build_model(tiny_config())).eval()
    small = slim(model, 12, 2, 24)
    torch._dynamo.reset()
    compiled = torch.compile(small)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x, tokens=12, depth=2, width=24), atol=ATOL, rtol=0)


def _optional(name: str):
    """Import ``name``, or skip; CI sets ADAPERCEIVER_REQUIRE_ONNX=1 so a missing package fails instead."""
    if os.environ.get("ADAPERCEIVER_REQUIRE_ONNX") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name)


@pytest.mark.parametrize("variant", ["classification", "classification+options"])
def test_onnx_matches_onnxruntime(tmp_path, variant, loud_init, variant_config):
    _optional("onnx")
    _optional("onnxscript")
    ort = _optional("onnxruntime")
    from adaperceiver.export import export_onnx

    model = loud_init(build_model(variant_config(variant))).eval()
    small = slim(model, 12, 2, 24)
    path = export_onnx(small, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # a single self-contained file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 4):  # dynamic batch axis
        x = torch.randn(b, 3, 16, 16)
        (y,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            ref = model(x, tokens=12, depth=2, width=24).numpy()
        assert abs(y - ref).max() < ATOL


def test_export_cli(tmp_path, capsys, loud_init, tiny_config):
    model = loud_init(build_model(tiny_config()))
    save_pretrained(model, tmp_path / "run")
    assert main(["export", "--model", str(tmp_path / "run"), "--tokens", "8", "--depth", "2", "--width", "16",
                 "--out", str(tmp_path / "slim")]) == 0
    assert "M parameters" in capsys.readouterr().out
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path / "slim")(x), model.eval()(x, tokens=8, depth=2, width=16),
                                   atol=ATOL, rtol=0)
    assert main(["export", "--model", str(tmp_path / "run"), "--tokens", "8", "--depth", "2", "--width", "16",
                 "--out", str(tmp_path / "slim16"), "--dtype", "bfloat16"]) == 0
    capsys.readouterr()
    size = (tmp_path / "slim16" / "model.safetensors").stat().st_size
    assert size < 0.6 * (tmp_path / "slim" / "model.safetensors").stat().st_size  # 2 bytes a weight, not 4
    assert main(["export", "--model", str(tmp_path / "run"), "--tokens", "8", "--depth", "9", "--width", "16",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "depth must be an int" in capsys.readouterr().err


def test_slim_method_and_package_export(tiny_config):
    import adaperceiver
    from adaperceiver import build_model

    model = build_model(tiny_config()).eval()
    x = torch.randn(2, 3, 16, 16)
    small = model.slim(tokens=8, depth=2, width=16)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x, tokens=8, depth=2, width=16), atol=1e-5, rtol=0)
        # the package-level function is the same operation as the method
        torch.testing.assert_close(adaperceiver.slim(model, 8, 2, 16)(x), small(x), atol=0, rtol=0)
