"""Invariants of the adaptive network: nesting of token counts, width slicing, early exit, errors."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from adaperceiver import AdaPerceiverDense, build_model, create_model, list_models, preset_config
from adaperceiver.models.layers import RotaryEmbedding
from adaperceiver.models.masks import token_block_mask

ATOL = 2e-5


@pytest.fixture(params=["classification", "dense", "classification+options", "dense+options"])
def model(request, loud_init, variant_config):
    return loud_init(build_model(variant_config(request.param))).eval()


def x_for(model, b=3, size=16):
    return torch.randn(b, model.cfg.in_chans, size, size)


def test_output_shapes(model):
    x = x_for(model)
    y = model(x)
    if isinstance(model, AdaPerceiverDense):
        assert y.shape == (3, 6, 4, 4)
        assert model(x_for(model, size=24)).shape == (3, 6, 6, 6)  # other image sizes resample positions
    else:
        assert y.shape == (3, 5)


def test_prefix_property_every_granularity(model):
    """The first g latents of the full run equal a run with g tokens, at every depth."""
    x = x_for(model)
    with torch.no_grad():
        full = model.forward_features(x)
        for g in model.cfg.token_grans:
            for d in range(1, model.num_blocks + 1):
                small = model.forward_features(x, tokens=g, depth=d).latents
                ref = model.forward_features(x, depth=d).latents[:, :g]
                torch.testing.assert_close(small, ref, atol=ATOL, rtol=0)
        assert full.latents.shape[1] == model.cfg.num_latents


def test_block_mask_structure():
    m = token_block_mask(12, (4, 8, 12))
    assert m[0, :4].all() and not m[0, 4:].any()
    assert m[5, :8].all() and not m[5, 8:].any()
    assert m is not None and m[11].all()
    assert token_block_mask(4, (4, 8)) is None  # a single group needs no mask
    beyond = token_block_mask(10, (4, 8))  # latents past the last granularity see only the first 8
    assert beyond[9, :8].all() and not beyond[9, 8:].any()


def test_anytime_equals_individual_calls(model):
    x = x_for(model)
    with torch.no_grad():
        for width in (None, 16):
            any_out = model.forward_anytime(x, width=width)
            assert any_out.tokens == model.cfg.token_grans
            assert any_out.depths == tuple(range(1, model.num_blocks + 1))
            for t in any_out.tokens:
                for d in any_out.depths:
                    torch.testing.assert_close(any_out.get(t, d), model(x, tokens=t, depth=d, width=width), atol=ATOL, rtol=0)


def test_anytime_subsets_and_errors(model):
    x = x_for(model)
    out = model.forward_anytime(x, tokens=10, depths=[2])
    assert out.tokens == (4, 8, 10) and out.depths == (2,)
    with torch.no_grad():
        torch.testing.assert_close(out.get(10, 2), model(x, tokens=10, depth=2), atol=ATOL, rtol=0)
    with pytest.raises(KeyError, match="have tokens"):
        out.get(16, 2)
    with pytest.raises(ValueError, match=r"token_counts must be ints in \[1, 10\]"):
        model.forward_anytime(x, tokens=10, token_counts=[4, 12])


def test_depth_equals_intermediate_readout(model):
    x = x_for(model)
    with torch.no_grad():
        feats = model.forward_features(x, depth=model.num_blocks)
        patches, grid = model.patch_embed(x)
        z = model.read_latents(patches, model.cfg.num_latents)
        _, states = model.run_blocks(z, model.num_blocks, keep=range(1, model.num_blocks + 1))
        torch.testing.assert_close(states[-1], feats.latents)
        for d, s in enumerate(states, start=1):
            torch.testing.assert_close(model.write_out(s, patches, grid), model(x, depth=d), atol=ATOL, rtol=0)


def test_width_slicing_equals_per_sample_masking(model):
    x = x_for(model, b=3)
    widths = [16, 24, 32]
    model.train()
    masked = model(x, width=widths)
    model.eval()
    with torch.no_grad():
        for i, w in enumerate(widths):
            sliced = model(x[i : i + 1], width=w)
            torch.testing.assert_close(masked[i : i + 1], sliced, atol=ATOL, rtol=0)
        # a tensor of widths is accepted too and gives the same answer
        torch.testing.assert_close(model(x, width=torch.tensor(widths)), masked.detach(), atol=ATOL, rtol=0)


def test_each_axis_changes_the_output(model):
    x = x_for(model)
    with torch.no_grad():
        full = model(x)
        for kw in (dict(tokens=4), dict(depth=1), dict(width=16)):
            assert (model(x, **kw) - full).abs().max() > 1e-4, kw


def test_width_slice_is_a_real_slice(tiny_config):
    """Inference at a smaller width multiplies by a smaller weight: the FFN FLOPs drop in proportion."""
    from adaperceiver.evaluation.cost import flops_by_op

    model = build_model(tiny_config(depth=1, embed_mlp=False)).eval()
    x = torch.randn(2, 3, 16, 16)
    full = flops_by_op(model, x)["aten.addmm"] + flops_by_op(model, x).get("aten.mm", 0)
    half = flops_by_op(model, x, width=16)["aten.addmm"] + flops_by_op(model, x, width=16).get("aten.mm", 0)
    hidden_full, hidden_half = model.cfg.mlp_hidden, int(16 * model.cfg.ffn_ratio)
    # one block's FFN: 2 matmuls of (B*N) x D x hidden, 2 FLOPs per multiply-add
    b_n, d = 2 * model.cfg.num_latents, model.cfg.embed_dim
    assert full - half == 2 * 2 * b_n * d * (hidden_full - hidden_half)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tokens=0), r"tokens must be an int in \[1, 32\]"),
        (dict(tokens=33), r"tokens must be an int in \[1, 32\] \(trained granularities \[4, 8, 12, 16\]\)"),
        (dict(tokens=8.0), r"tokens must be an int"),
        (dict(depth=0), r"depth must be an int in \[1, 3\]"),
        (dict(depth=4), r"depth must be an int in \[1, 3\]"),
        (dict(width=33), r"width must be an int in \[1, 32\]"),
        (dict(width=0), r"width must be an int in \[1, 32\]"),
        (dict(width=20.5), r"width must be an int"),
        (dict(width=[16, 32]), r"per-sample width list has 2 entries for a batch of 3"),
        (dict(width=[16, 32, 64]), r"width must be an int in \[1, 32\]"),
    ],
)
def test_bad_configuration_errors(kwargs, match, tiny_config):
    model = build_model(tiny_config()).eval()
    with pytest.raises(ValueError, match=match):
        model(torch.randn(3, 3, 16, 16), **kwargs)


def test_bad_input_errors(tiny_config):
    model = build_model(tiny_config()).eval()
    with pytest.raises(ValueError, match="model takes 3-channel images, got 1 channels"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        model(torch.randn(2, 3, 18, 16))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\)"):
        model(torch.randn(3, 16, 16))


def test_width_without_hidden_units_is_refused(tiny_config):
    model = build_model(tiny_config(embed_dim=32, ffn_ratio=0.1, widths=(16, 32)))
    with pytest.raises(ValueError, match=r"width must be an int in \[10, 32\]"):
        model(torch.randn(1, 3, 16, 16), width=5)


def test_config_errors(tiny_config):
    tiny_config(token_grans=(4, 8))  # granularities may stop below num_latents (the reference runs them)
    with pytest.raises(ValueError, match=r"must stay within the RoPE table \(32 positions\)"):
        tiny_config(token_grans=(4, 8, 64))
    with pytest.raises(ValueError, match=r"rope_scaling must be one of \['none', 'ntk'\], got 'yarn'"):
        tiny_config(rope_scaling="yarn")
    with pytest.raises(ValueError, match=r"beyond_grans must be one of \['first_gk', 'all'\]"):
        tiny_config(beyond_grans="some")
    with pytest.raises(ValueError, match="RoPE table length is unknown: set rope_base_len or max_latents_mult"):
        tiny_config(max_latents_mult=None)
    with pytest.raises(ValueError, match="increasing"):
        tiny_config(token_grans=(8, 4, 16))
    with pytest.raises(ValueError, match="task must be"):
        tiny_config(task="detection")


@pytest.mark.parametrize("variant", ["classification", "classification+options"])
def test_early_exit_regroups_per_sample(variant, loud_init, variant_config):
    model = loud_init(build_model(variant_config(variant))).eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        out = model.forward_early_exit(x, threshold=0.0)  # everyone is confident after block 1
        assert out.exit_depth.tolist() == [1] * 6
        torch.testing.assert_close(out.logits, model(x, depth=1), atol=ATOL, rtol=0)
        out = model.forward_early_exit(x, threshold=1.0)  # nobody is: all run every block
        assert out.exit_depth.tolist() == [model.num_blocks] * 6
        torch.testing.assert_close(out.logits, model(x), atol=ATOL, rtol=0)
        # a middle threshold: each sample's logits equal the run at its own exit depth
        conf1 = model(x, depth=1).softmax(-1).amax(-1)
        tau = float(conf1.median())
        out = model.forward_early_exit(x, threshold=tau, width=[16, 32, 24, 16, 32, 24])
        assert 0 < int((out.exit_depth == 1).sum()) < 6
        for i in range(6):
            d = int(out.exit_depth[i])
            w = [16, 32, 24, 16, 32, 24][i]
            torch.testing.assert_close(out.logits[i : i + 1], model(x[i : i + 1], depth=d, width=w), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        model.forward_early_exit(x, threshold=1.5)


def test_presets():
    ours = {m for m in list_models() if m.startswith("adaperceiver")}
    assert ours == {"adaperceiver_tiny", "adaperceiver_tiny64", "adaperceiver_tiny_paper",
                    "adaperceiver_small", "adaperceiver_base"}
    assert set(list_models()) - ours == {"vit_tiny", "vit_tiny_x2", "vit_tiny_x4", "flexivit_tiny", "flexivit_tiny64"}
    tiny, paper = preset_config("adaperceiver_tiny"), preset_config("adaperceiver_tiny_paper")
    recipe = dict(readout="mean", head_norm=True, embed_mlp=False, ls_init=0.01, rope_theta=10.0, init="torch")
    assert {k: getattr(tiny, k) for k in recipe} == recipe
    assert (paper.readout, paper.head_norm, paper.embed_mlp, paper.ls_init, paper.rope_theta, paper.init) == \
        ("query", False, True, 0.1, 1e4, "trunc_normal")
    assert {k: v for k, v in tiny.to_dict().items() if k not in recipe} == {k: v for k, v in paper.to_dict().items() if k not in recipe}
    c64 = preset_config("adaperceiver_tiny64")
    assert (c64.img_size // c64.patch_size) ** 2 == 64
    assert {k: v for k, v in c64.to_dict().items() if k not in ("img_size", "patch_size")} == \
        {k: v for k, v in tiny.to_dict().items() if k not in ("img_size", "patch_size")}
    base = preset_config("adaperceiver_base")
    assert (base.embed_dim, base.num_heads, base.depth, base.num_latents, base.ffn_ratio) == (832, 13, 21, 256, 2.57)
    assert base.widths == (416, 624, 832) and base.token_grans == (32, 64, 96, 128, 192, 256)
    m = create_model("adaperceiver_tiny", num_classes=7)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert not any(n.startswith(("patch_embed.mlp.", "output_query")) for n, _ in m.named_parameters())
    assert preset_config("adaperceiver_tiny", num_latents=16).token_grans == (8, 16)


def test_init_choice_sets_the_scale_of_every_linear():
    """trunc_normal: std 0.02 cut at 2 std (the reference); torch: each layer's fan-in uniform bound 1/sqrt(fan_in)."""
    torch.manual_seed(0)
    trunc = create_model("adaperceiver_tiny", init="trunc_normal")
    torch.manual_seed(0)
    default = create_model("adaperceiver_tiny")
    for (name, a), (_, b) in zip(trunc.named_modules(), default.named_modules()):
        if isinstance(a, (torch.nn.Linear, torch.nn.Conv2d)):
            fan_in = a.weight[0].numel()
            assert a.weight.abs().max() <= 0.04 and a.weight.std() < 0.025, name
            assert b.weight.abs().max() <= fan_in ** -0.5 + 1e-6 and b.weight.abs().max() > 0.5 * fan_in ** -0.5, name
    with pytest.raises(ValueError, match="init must be 'trunc_normal' or 'torch', got 'xavier'"):
        preset_config("adaperceiver_tiny", init="xavier")


def test_old_preset_names_warn_once_and_build_their_old_configs(monkeypatch):
    from adaperceiver.models import presets

    monkeypatch.setattr(presets, "_warned", set())
    with pytest.warns(FutureWarning, match="'adaperceiver_tiny_v2' is deprecated .*use 'adaperceiver_tiny'"):
        v2 = preset_config("adaperceiver_tiny_v2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert preset_config("adaperceiver_tiny_v2") == v2  # once per name
    paper = preset_config("adaperceiver_tiny_paper")
    assert v2 == dataclasses.replace(paper, readout="mean", head_norm=True)
    with pytest.warns(FutureWarning, match="adaperceiver_tiny"):
        assert preset_config("adaperceiver_tiny_v3") == dataclasses.replace(v2, embed_mlp=False, ls_init=0.01)
    with pytest.warns(FutureWarning, match="builds the same config"):
        assert preset_config("adaperceiver_tiny_v4") == preset_config("adaperceiver_tiny")
    with pytest.warns(FutureWarning, match="use 'adaperceiver_tiny64'"):
        assert preset_config("adaperceiver_tiny64_v2") == dataclasses.replace(v2, img_size=64, patch_size=8)
    with pytest.raises(ValueError, match="available"):
        create_model("adaperceiver_huge")
    with pytest.raises(ValueError, match="unknown config keys"):
        create_model("adaperceiver_tiny", num_clases=3)


@pytest.mark.parametrize("variant", ["classification", "classification+options", "dense+options"])
def test_training_step_reaches_every_parameter(variant, variant_config):
    model = build_model(variant_config(variant)).train()
    x = torch.randn(4, 3, 16, 16)
    out = model.forward_anytime(x, width=[16, 24, 32, 32])
    out.outputs.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_static_config_same_math(loud_init, tiny_config):
    model = loud_init(build_model(tiny_config())).eval()
    x = torch.randn(2, 3, 16, 16)
    for t, d, w in [(8, 2, 16), (12, 3, 24), (16, 1, 32)]:
        static = build_model(model.cfg.static_config(t, d, w)).eval()
        own = static.state_dict()
        src = model.state_dict()
        sliced = {}
        for k, v in own.items():
            ref = src[k]
            sliced[k] = ref[tuple(slice(0, n) for n in v.shape)]
        static.load_state_dict(sliced)
        with torch.no_grad():
            torch.testing.assert_close(static(x), model(x, tokens=t, depth=d, width=w), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"depth in \[1, 3\]"):
        model.cfg.static_config(8, 4, 16)


def test_anytime_without_block_mask_still_equals_individual_calls(loud_init, tiny_config):
    import dataclasses

    model = loud_init(build_model(dataclasses.replace(tiny_config(), latent_mask="none"))).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model.forward_anytime(x)
        for t in out.tokens:
            for d in out.depths:
                torch.testing.assert_close(out.get(t, d), model(x, tokens=t, depth=d), atol=ATOL, rtol=0)
        # and prefixes really do not nest here, so a single-pass shortcut would have been wrong
        one_pass = model.forward_anytime(x, token_counts=(16,)).outputs
        assert one_pass.shape[1] == 1
        assert (model.forward_features(x, tokens=4).latents - model.forward_features(x).latents[:, :4]).abs().max() > 1e-3


def real_rotation(rope, x):
    """The textbook formula, pair by pair: (a, b) -> (a cos - b sin, a sin + b cos)."""
    n = x.shape[-2]
    a, b = x[..., 0::2], x[..., 1::2]
    cos, sin = rope.cos[:n], rope.sin[:n]
    out = torch.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def test_rope_equals_the_real_formula_and_caches_per_length():
    rope = RotaryEmbedding(8, 16)
    x = torch.randn(2, 3, 16, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rope(x), real_rotation(rope, x), atol=1e-6, rtol=0)
    xt = torch.randn(2, 5, 3, 8).transpose(1, 2)  # the (B, N, H, hd) -> (B, H, N, hd) view attention hands it
    torch.testing.assert_close(rope(xt), real_rotation(rope, xt), atol=1e-6, rtol=0)
    assert rope.table(5) is rope.table(5) and rope.table(5).shape == (5, 4)
    xb = x.bfloat16()  # rotated in float32, returned in the input's dtype
    assert rope(xb).dtype == torch.bfloat16
    torch.testing.assert_close(rope(xb).float(), real_rotation(rope, xb.float()), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="16 positions, asked for 17"):
        rope(torch.randn(1, 1, 17, 8))


def test_rope_table_follows_its_buffers():
    rope = RotaryEmbedding(8, 16)
    old = rope.table(4)
    rope.sin.mul_(0)  # an in-place edit of the buffer invalidates the cached table
    assert not torch.equal(rope.table(4), old)
    x = torch.randn(1, 1, 4, 8)
    torch.testing.assert_close(rope(x), real_rotation(rope, x))
    before = rope.table(4)
    rope.to(torch.float64)  # moved / cast: rebuilt from the new buffers
    assert rope.table(4) is not before and rope.table(4).dtype == torch.complex64


def test_learning_options_default_to_the_reference_layout(tiny_config, variant_config):
    """Off by default (converted checkpoints keep their keys); on, they change exactly their parameters."""
    ref = set(build_model(tiny_config()).state_dict())
    assert {"write.attn.q.weight", "output_query"} <= ref and "head_norm.weight" not in ref
    model = build_model(variant_config("classification+options"))
    keys = set(model.state_dict())
    assert "head_norm.weight" in keys
    assert not any(k.startswith(("write.", "output_query")) for k in keys)  # the mean read-out has no write
    with pytest.raises(ValueError, match="readout must be 'query' or"):
        tiny_config(task="dense", readout="mean")
