"""Reference-layout checkpoints: every storage variant loads, and bad files are refused clearly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from adaperceiver import from_pretrained
from adaperceiver.cli import main as cli_main
from adaperceiver.reference import config_from_reference, convert_reference_state_dict, load_reference

# the reference's flat constructor arguments (as its hub config.json stores them)
REF_CONFIG = {
    "embed_dim": 32, "num_heads": 4, "depth": 2, "max_latent_tokens": 16, "max_latent_tokens_mult": 2,
    "rope_theta": 10000, "ffn_ratio": 2.57, "qkv_bias": True, "proj_bias": True, "ls_init_values": 1e-5,
    "act_layer": "gelu", "norm_layer": "layernorm", "ffn_layer": "mlp", "attn_layer": "flex",
    "process_token_init": "learned", "block_mask": "block", "mask_token_grans": [4, 8, 16],
    "mat_dims": [16, 24, 32], "img_size": 16, "in_channels": 3, "patch_size": 4, "num_classes": 5,
    "use_embed_ffn": True, "use_output_ffn": False, "proj_drop": 0.0, "attn_drop": 0.0, "drop_path": 0.0,
    "head_drop": 0.0,
}
INVERSE = [  # our name -> the reference's, to fabricate reference-layout files from our models
    ("patch_embed.proj.", "patch_embed.embed.proj."), ("patch_embed.mlp.", "patch_embed.ffn."),
    ("latent_token", "process_latents.token"), ("output_query", "output_latents.token"),
    ("read.norm_q.", "read_head.snk_norm."), ("read.norm_kv.", "read_head.src_norm."), ("read.attn.", "read_head.cattn."),
    ("write.norm_q.", "write_head.snk_norm."), ("write.norm_kv.", "write_head.src_norm."), ("write.attn.", "write_head.cattn."),
    (".mlp.", ".ffn."), ("head_fc.", "output_adapter.ffn."),
]


def reference_layout(model):
    out = {}
    for k, v in model.state_dict().items():
        for ours, theirs in INVERSE:
            if k.startswith(ours) or (ours.startswith(".") and ours in k):
                k = k.replace(ours, theirs, 1)
                break
        out[k] = v.clone()
    return out


@pytest.fixture
def model(loud_init):
    from adaperceiver import build_model

    return loud_init(build_model(config_from_reference(REF_CONFIG))).eval()


def test_config_mapping():
    cfg = config_from_reference(REF_CONFIG)
    assert (cfg.embed_dim, cfg.depth, cfg.num_latents, cfg.token_grans, cfg.widths) == (32, 2, 16, (4, 8, 16), (16, 24, 32))
    assert cfg.latent_mask == "block" and cfg.ffn_ratio == 2.57 and not cfg.head_mlp
    assert config_from_reference({**REF_CONFIG, "attn_layer": "full"}).latent_mask == "none"
    with pytest.raises(ValueError, match=r"ffn_layer='swiglu' is not supported; supported: \['mlp'\]"):
        config_from_reference({**REF_CONFIG, "ffn_layer": "swiglu"})
    with pytest.raises(ValueError, match="unknown reference config key 'banana'"):
        config_from_reference({**REF_CONFIG, "banana": 1})


def test_round_trip_through_every_storage_variant(tmp_path, model):
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x, tokens=8, depth=1, width=24)
    ref_state = reference_layout(model)
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(REF_CONFIG))

    # 1) hub layout: safetensors + flat config.json
    save_file(ref_state, str(tmp_path / "hub.safetensors"))
    # 2) raw EMA checkpoint: DDP + compile prefixes, pos_embed without batch axis, EMA counter
    raw = {f"module._orig_mod.{k}": v for k, v in ref_state.items()}
    raw["module._orig_mod.patch_embed.pos_embed"] = raw["module._orig_mod.patch_embed.pos_embed"][0]
    raw["n_averaged"] = torch.tensor(100)
    torch.save(raw, tmp_path / "ema.pth")
    # 3) a training checkpoint dict wrapping the state dict
    torch.save({"state_dict": ref_state, "epoch": 3}, tmp_path / "ckpt.pt")

    for name in ("hub.safetensors", "ema.pth", "ckpt.pt"):
        loaded = load_reference(tmp_path / name, cfg_path)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, tokens=8, depth=1, width=24), want, atol=1e-6, rtol=0)


def test_refuses_files_that_do_not_fit(tmp_path, model):
    ref_state = reference_layout(model)
    bad = dict(ref_state)
    bad.pop("write_head.cattn.q.weight")
    bad["surprise.weight"] = torch.zeros(3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['write.attn.q.weight'\].*unexpected keys \['surprise.weight'\]"):
        load_reference(tmp_path / "bad.safetensors", REF_CONFIG)

    wrong = dict(ref_state)
    wrong["blocks.0.ffn.fc1.weight"] = torch.zeros(80, 32)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatch blocks.0.mlp.fc1.weight: file \(80, 32\) vs model \(82, 32\)"):
        load_reference(tmp_path / "wrong.safetensors", REF_CONFIG)

    with pytest.raises(ValueError, match="weights say depth=2, config says 3"):
        load_reference(tmp_path / "bad.safetensors", {**REF_CONFIG, "depth": 3})

    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.safetensors is not a readable safetensors file"):
        load_reference(tmp_path / "corrupt.safetensors", REF_CONFIG)
    (tmp_path / "corrupt.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="corrupt.pth is not a readable torch checkpoint"):
        load_reference(tmp_path / "corrupt.pth", REF_CONFIG)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_reference(tmp_path / "missing.pth", REF_CONFIG)


def test_convert_cli(tmp_path, model, capsys):
    save_file(reference_layout(model), str(tmp_path / "w.safetensors"))
    (tmp_path / "c.json").write_text(json.dumps(REF_CONFIG))
    assert cli_main(["convert", str(tmp_path / "w.safetensors"), "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "out")]) == 0
    assert "classification model" in capsys.readouterr().out
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path / "out")(x), model(x), atol=1e-6, rtol=0)
    # a user error is one line on stderr and exit code 2, not a traceback
    assert cli_main(["convert", str(tmp_path / "nope.pth"), "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o2")]) == 2
    assert "error: no checkpoint file" in capsys.readouterr().err


def test_key_renaming_covers_dense_models():
    from adaperceiver import build_model

    dense = build_model(config_from_reference({**REF_CONFIG, "output_feat_dim": 8, "use_output_ffn": True}, task="dense"))
    names = set(dense.state_dict())
    ref_like = {"output_latents.proj.weight", "output_adapter.norm.weight", "output_adapter.ffn.fc1.weight"}
    converted = set(convert_reference_state_dict({k: torch.zeros(1) for k in ref_like}))
    assert converted <= names


# --------------------------------------------------------------------------------------------------
# what the hub class writes, and the training code's dataclass sections
HUB_CONFIG = {k: v for k, v in REF_CONFIG.items() if k != "max_latent_tokens_mult"}


def test_semantics_follow_the_config_form():
    hub = config_from_reference(HUB_CONFIG)  # flat, no max_latent_tokens_mult: the hub class's config.json
    assert (hub.rope_scaling, hub.rope_base_len, hub.beyond_grans, hub.max_tokens, hub.max_latents_mult) == ("ntk", 16, "all", None, None)
    train = config_from_reference(REF_CONFIG)  # flat with the multiplier: the training code's arguments
    assert (train.rope_scaling, train.rope_len, train.beyond_grans, train.max_tokens) == ("none", 32, "first_gk", 32)
    forced = config_from_reference(REF_CONFIG, semantics="hub")
    assert forced.rope_scaling == "ntk" and forced.max_latents_mult is None
    with pytest.raises(ValueError, match=r"semantics must be one of \['training', 'hub'\], got 'eval'"):
        config_from_reference(REF_CONFIG, semantics="eval")


def test_hub_mat_dims_null_converts(tmp_path, model):
    """The hub writes "mat_dims": null when built without widths; our default widths stand in."""
    (tmp_path / "c.json").write_text(json.dumps({**HUB_CONFIG, "mat_dims": None}))
    save_file(reference_layout(model), str(tmp_path / "w.safetensors"))
    loaded = load_reference(tmp_path / "w.safetensors", tmp_path / "c.json")
    assert loaded.cfg.widths == (16, 24, 32)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, tokens=8), model(x, tokens=8), atol=1e-6, rtol=0)


def sectioned(**encoder):
    enc = {k: REF_CONFIG[k] for k in ("embed_dim", "num_heads", "depth", "max_latent_tokens", "max_latent_tokens_mult",
                                      "rope_theta", "ffn_ratio", "ls_init_values", "mask_token_grans")}
    task = {k: REF_CONFIG[k] for k in ("img_size", "in_channels", "patch_size", "num_classes", "use_embed_ffn", "use_output_ffn")}
    return {"AdaPercevierConfig": {**enc, **encoder}, "ClassificationConfig": task}


def test_sectioned_config_with_adapter_dims():
    """The training code's dataclass has in_dim / out_dim (None = embed_dim)."""
    cfg = config_from_reference(sectioned(in_dim=None, out_dim=None))
    assert cfg.embed_dim == 32 and cfg.rope_scaling == "none" and cfg.max_tokens == 32
    assert config_from_reference(sectioned(in_dim=32, out_dim=32)).embed_dim == 32
    with pytest.raises(ValueError, match=r"in_dim=48 is not supported: only adapters of embed_dim \(32\) or None"):
        config_from_reference(sectioned(in_dim=48))


def test_granularities_need_not_end_at_max_latent_tokens():
    assert config_from_reference({**HUB_CONFIG, "mask_token_grans": [4, 8]}).token_grans == (4, 8)
    assert config_from_reference({**HUB_CONFIG, "mask_token_grans": [4, 8, 16, 64]}).token_grans == (4, 8, 16, 64)
    assert config_from_reference({**REF_CONFIG, "mask_token_grans": [4, 8]}).token_grans == (4, 8)
    with pytest.raises(ValueError, match=r"must stay within the RoPE table \(32 positions\)"):
        config_from_reference({**REF_CONFIG, "mask_token_grans": [4, 8, 16, 64]})  # the training code could not run 64


def test_norm_randn_latent_init_converts(tmp_path, model):
    """``process_token_init`` only changes the init; the stored latent token is used the same way."""
    save_file(reference_layout(model), str(tmp_path / "w.safetensors"))
    loaded = load_reference(tmp_path / "w.safetensors", {**REF_CONFIG, "process_token_init": "norm_randn"})
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=0)


def test_missing_multiplier_is_not_assumed():
    cfg = config_from_reference({**sectioned(), "AdaPercevierConfig": {k: v for k, v in sectioned()["AdaPercevierConfig"].items()
                                                                       if k != "max_latent_tokens_mult"}})
    assert cfg.max_latents_mult is None and cfg.max_tokens == 16 and cfg.rope_scaling == "none"
    with pytest.raises(ValueError, match=r"lacks \['num_heads'\]: the weights do not determine them"):
        config_from_reference({k: v for k, v in REF_CONFIG.items() if k != "num_heads"})


def test_hub_directory_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty has no model.safetensors"):
        load_reference(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint file or hub model directory at .*missing"):
        load_reference(tmp_path / "missing")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="w.safetensors is a weights file: give its reference constructor arguments"):
        load_reference(tmp_path / "w.safetensors")
    assert cli_main(["convert", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "has no model.safetensors" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# convert verifies against the weights what it can and says what it cannot (issue 24)
_OFFICIAL = __import__("pathlib").Path(__file__).parent / "fixtures" / "official"


def _official(tmp_path, cached: bool, **edits):
    """The reference fixture's classifier (optionally with its cached RoPE table and block mask) and its
    config with ``edits`` applied to the AdaPercevierConfig section: (weights path, config path)."""
    from safetensors.torch import load_file

    ref = json.loads((_OFFICIAL / "config.json").read_text())["classification"]
    cfg = {k: v for k, v in ref.items() if k.endswith("Config")}
    cfg["AdaPercevierConfig"].update(edits)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    weights = _OFFICIAL / "classification.safetensors"
    if cached:
        io = load_file(str(_OFFICIAL / "classification_io.safetensors"))
        state = load_file(str(weights))
        state["freqs_cis"] = torch.view_as_complex(io["rope.freqs_cis_real"].contiguous())
        state["block_mask"] = io["mask.block.tokens48"]
        weights = tmp_path / "cached.pt"
        torch.save(state, weights)
    return weights, tmp_path / "config.json"


def test_convert_warns_in_one_line_about_what_the_weights_cannot_confirm(tmp_path, capsys):
    weights, config = _official(tmp_path, cached=False)
    assert cli_main(["convert", str(weights), "--config", str(config), "--out", str(tmp_path / "m")]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("adaperceiver convert: warning:"), err
    for field in ("num_heads=4", "rope_theta=10000", "max_latent_tokens=32", "token_grans=[8, 16, 32]"):
        assert field in err[0], err


def test_convert_confirms_heads_theta_and_granularities_from_a_cached_table_and_mask(tmp_path):
    import warnings

    weights, config = _official(tmp_path, cached=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_reference(weights, config)
    said = " ".join(str(w.message) for w in caught)
    assert "max_latent_tokens=32" in said and "num_heads" not in said and "token_grans" not in said, said


@pytest.mark.parametrize("edit,named", [
    ({"num_heads": 8}, r"num_heads = 4.*num_heads 8"), ({"num_heads": 2}, r"num_heads 2"),
    ({"rope_theta": 100}, r"rope_theta 100"), ({"mask_token_grans": [8, 24, 32]}, r"granularities \[8, 24, 32\]"),
    ({"max_latent_tokens_mult": 3}, r"64 positions.*96"), ({"ffn_ratio": 3.0}, r"128 hidden units.*ffn_ratio 3"),
])
def test_convert_refuses_a_config_the_weights_contradict(tmp_path, edit, named):
    import re

    weights, config = _official(tmp_path, cached=True, **edit)
    with pytest.raises(ValueError) as info:
        load_reference(weights, config)
    assert re.search(named, str(info.value)) and len(str(info.value).splitlines()) == 1, str(info.value)
