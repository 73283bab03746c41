"""The released (hub) model's behaviour above ``max_latent_tokens``, checked without our own code.

The expected values come from a minimal forward written here from the formulas alone (reference
key names, plain softmax attention, complex-number RoPE, masks built by loops): it uses none of the
library's RoPE, mask, attention or key-renaming code. It is anchored on the recorded fixture (it
reproduces the training code's outputs, including 48 and 64 tokens), then run with the hub's two
rules to give the numbers a converted hub checkpoint must produce:

- RoPE: a table of ``max_latent_tokens`` positions; for N above it, rebuilt for N positions with
  every inverse frequency divided by ``s = N / max_latent_tokens``;
- mask: granularities larger than N are dropped and, when N is above the last remaining one, N is
  appended as a last group (latents past the last granularity see all N latents).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from adaperceiver import from_pretrained
from adaperceiver.cli import main as cli_main
from adaperceiver.reference import load_reference

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official"
ATOL = 1e-5


# --------------------------------------------------------------------------------------------------
# the re-derivation: only torch primitives and the formulas
def rope_angles(n: int, head_dim: int, theta: float, base_len: int, rule: str) -> torch.Tensor:
    """``(n, head_dim/2)`` rotation angles in float32; ``rule`` is "training" (never scaled) or "hub"."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if rule == "hub" and n > base_len:
        inv = inv / (n / base_len)
    return torch.arange(n, dtype=torch.float32)[:, None] * inv[None, :]


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (x0, x1), (x2, x3), ... as complex numbers, times exp(i * angle)."""
    c = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(c * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


def training_mask(n: int, grans: list[int]) -> torch.Tensor:
    """Query q sees keys k < g(q): the first granularity above q, the last one for q past it."""
    allow = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        limit = next((g for g in grans if g > q), grans[-1])
        for k in range(min(limit, n)):
            allow[q, k] = True
    return allow


def hub_mask(n: int, grans: list[int]) -> torch.Tensor:
    """Granularities <= n, then n appended when above the last; each group sees itself and all before."""
    groups = [g for g in grans if g <= n]
    if not groups or n > groups[-1]:
        groups.append(n)
    allow = torch.zeros(n, n, dtype=torch.bool)
    start = 0
    for end in groups:
        allow[start:end, :end] = True
        start = end
    return allow


def rederived_forward(sd: dict, conf: dict, x: torch.Tensor, n: int, rule: str) -> torch.Tensor:
    """The whole model at ``n`` latents, full width and depth, reference layout of the output."""
    d, heads = conf["embed_dim"], conf["num_heads"]
    hd = d // heads

    def ln(t, p):
        return F.layer_norm(t, (d,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)

    def lin(t, p):
        return t @ sd[p + ".weight"].T + sd[p + ".bias"]

    def mlp(t, p):
        return lin(F.gelu(lin(t, p + ".fc1")), p + ".fc2")

    angles = rope_angles(n, hd, float(conf["rope_theta"]), conf["max_latent_tokens"], rule)

    def attention(p, xq, xkv, rope_q, rope_k, allow=None):
        b = xq.shape[0]
        q, k, v = (lin(t, f"{p}.{name}").reshape(b, t.shape[1], heads, hd).transpose(1, 2)
                   for name, t in (("q", xq), ("k", xkv), ("v", xkv)))
        if rope_q:
            q = rotate(q, angles)
        if rope_k:
            k = rotate(k, angles)
        scores = q @ k.transpose(-1, -2) / hd ** 0.5
        if allow is not None:
            scores = scores.masked_fill(~allow, float("-inf"))
        out = scores.softmax(-1) @ v
        return lin(out.transpose(1, 2).reshape(b, -1, d), p + ".proj")

    patch = sd["patch_embed.embed.proj.weight"].shape[-1]
    p = F.conv2d(x, sd["patch_embed.embed.proj.weight"], sd["patch_embed.embed.proj.bias"], stride=patch)
    p = p.flatten(2).transpose(1, 2) + sd["patch_embed.pos_embed"]
    p = mlp(ln(p, "patch_embed.norm"), "patch_embed.ffn")
    z = sd["process_latents.token"].expand(x.shape[0], n, d)
    z = z + attention("read_head.cattn", ln(z, "read_head.snk_norm"), ln(p, "read_head.src_norm"), True, False)
    allow = (hub_mask if rule == "hub" else training_mask)(n, conf["mask_token_grans"])
    for i in range(conf["depth"]):
        y = ln(z, f"blocks.{i}.norm1")
        z = z + sd[f"blocks.{i}.ls1.gamma"] * attention(f"blocks.{i}.attn", y, y, True, True, allow)
        z = z + sd[f"blocks.{i}.ls2.gamma"] * mlp(ln(z, f"blocks.{i}.norm2"), f"blocks.{i}.ffn")
    dense = "output_latents.proj.weight" in sd
    queries = lin(p, "output_latents.proj") if dense else sd["output_latents.token"].expand(x.shape[0], 1, d)
    o = queries + attention("write_head.cattn", ln(queries, "write_head.snk_norm"), ln(z, "write_head.src_norm"), False, True)
    return mlp(ln(o, "output_adapter.norm"), "output_adapter.ffn") if dense else lin(o, "output_adapter.ffn")


# --------------------------------------------------------------------------------------------------
# fixtures
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's fixture


def flat_config(task: str) -> dict:
    """The fixture model's constructor arguments in one flat dict."""
    entry = json.loads((FIXTURE / "config.json").read_text())[task]
    flat = {}
    for k, v in entry.items():
        if k.endswith("Config"):
            flat.update(v)
    return flat


def hub_config(task: str) -> dict:
    """What the hub class writes to config.json: flat, no ``max_latent_tokens_mult``, ``mat_dims``."""
    conf = flat_config(task)
    del conf["max_latent_tokens_mult"]
    conf["mat_dims"] = None  # the hub model built without widths
    return conf


@pytest.fixture(scope="module")
def data():
    out = {}
    for task in ("classification", "dense"):
        out[task] = (load_file(str(FIXTURE / f"{task}.safetensors")), load_file(str(FIXTURE / f"{task}_io.safetensors")))
    return out


def hub_dir(tmp_path: Path, task: str) -> Path:
    d = tmp_path / f"hub_{task}"
    d.mkdir()
    save_file(load_file(str(FIXTURE / f"{task}.safetensors")), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(hub_config(task)))
    return d


def to_reference_layout(task: str, out: torch.Tensor) -> torch.Tensor:
    return out.unsqueeze(1) if task == "classification" else out.flatten(-2).transpose(-1, -2)


# --------------------------------------------------------------------------------------------------
# the re-derivation itself is right: it reproduces the recorded training-code outputs
def test_rederivation_reproduces_the_recorded_outputs(data):
    sd, io = data["classification"]
    conf = flat_config("classification")
    with torch.no_grad():
        for n in (8, 12, 16, 32, 48, 64):  # 48 and 64: above max_latent_tokens and past the last granularity
            got = rederived_forward(sd, conf, io["input.x"], n, "training")
            torch.testing.assert_close(got, io[f"logits.tokens{n}.matfull.depth4"], atol=ATOL, rtol=0)
    assert torch.equal(training_mask(48, conf["mask_token_grans"]).to(torch.uint8), io["mask.block.tokens48"])
    table = io["rope.freqs_cis_real"]
    angles = rope_angles(64, 16, 10000.0, 32, "training")
    torch.testing.assert_close(torch.stack((angles.cos(), angles.sin()), -1), table, atol=1e-6, rtol=0)
    dsd, dio = data["dense"]
    with torch.no_grad():
        got = rederived_forward(dsd, flat_config("dense"), dio["input.x"], 16, "training")
    torch.testing.assert_close(got, dio["out.tokens16.matfull.depth3"], atol=ATOL, rtol=0)


def test_rederived_rules():
    """The two rules by hand on small cases, so that a wrong helper above cannot hide."""
    grans = [2, 4]
    # N = 6 past the last granularity: training -> rows 4, 5 see keys 0..3; hub -> they see all 6
    assert training_mask(6, grans)[4].tolist() == [True] * 4 + [False] * 2
    assert hub_mask(6, grans)[4].tolist() == [True] * 6
    assert hub_mask(6, grans)[1].tolist() == [True] * 2 + [False] * 4
    for n in range(1, 5):  # up to the last granularity both rules agree
        assert torch.equal(training_mask(n, grans), hub_mask(n, grans))
    # hub RoPE above the base length: position p at s = N / base rotates like p / s unscaled
    a = rope_angles(8, 4, 10000.0, 4, "hub")
    torch.testing.assert_close(a[6], rope_angles(4, 4, 10000.0, 4, "hub")[3], atol=1e-6, rtol=0)
    assert torch.equal(rope_angles(4, 4, 10000.0, 4, "hub"), rope_angles(4, 4, 10000.0, 4, "training"))


def test_hub_rules_change_the_outputs_above_the_maximum(data):
    """Guard for the tests below: above max_latent_tokens the two semantics differ clearly."""
    sd, io = data["classification"]
    conf = flat_config("classification")
    with torch.no_grad():
        for n in (33, 48):
            hub = rederived_forward(sd, conf, io["input.x"], n, "hub")
            diff = (hub - rederived_forward(sd, conf, io["input.x"], n, "training")).abs().max()
            assert diff > 1e-2, n
        torch.testing.assert_close(rederived_forward(sd, conf, io["input.x"], 32, "hub"), io["logits.tokens32.matfull.depth4"],
                                   atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------
# the library against it
@pytest.mark.parametrize("task,counts", [("classification", (8, 12, 32, 33, 40, 48, 64, 65, 100)),
                                         ("dense", (4, 16, 17, 24, 32, 50))])
def test_converted_hub_checkpoint_runs_as_the_hub(tmp_path, data, task, counts):
    sd, io = data[task]
    model = load_reference(hub_dir(tmp_path, task))
    conf = hub_config(task)
    x = io["input.x"]
    with torch.no_grad():
        for n in counts:
            want = rederived_forward(sd, conf, x, n, "hub")
            got = to_reference_layout(task, model(x, tokens=n))
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda m, n=n: f"tokens={n}: {m}")


def test_training_checkpoint_keeps_the_training_rules(data):
    """The fixture's sectioned config is the training code's: above the maximum, its rules hold."""
    sd, io = data["classification"]
    conf = json.loads((FIXTURE / "config.json").read_text())
    model = load_reference(FIXTURE / "classification.safetensors", conf["classification"])
    with torch.no_grad():
        for n in (40, 64):
            want = rederived_forward(sd, flat_config("classification"), io["input.x"], n, "training")
            torch.testing.assert_close(model(io["input.x"], tokens=n).unsqueeze(1), want, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"tokens must be an int in \[1, 64\]"):
        model(io["input.x"], tokens=65)


def test_hub_directory_converts_from_the_folder_alone(tmp_path, data, capsys):
    sd, io = data["classification"]
    src = hub_dir(tmp_path, "classification")
    assert cli_main(["convert", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "hub" in capsys.readouterr().out
    model = from_pretrained(tmp_path / "out")
    with torch.no_grad():
        want = rederived_forward(sd, hub_config("classification"), io["input.x"], 48, "hub")
        torch.testing.assert_close(model(io["input.x"], tokens=48).unsqueeze(1), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("semantics,grans", [("hub", [8, 16]), ("training", [8, 16]), ("hub", [8, 16, 32, 64])])
def test_granularities_not_ending_at_the_maximum(data, semantics, grans):
    """The reference runs granularity lists that stop below max_latent_tokens or go past it."""
    sd, io = data["classification"]
    conf = {**(hub_config("classification") if semantics == "hub" else flat_config("classification")), "mask_token_grans": grans}
    model = load_reference(FIXTURE / "classification.safetensors", conf)
    assert model.cfg.token_grans == tuple(grans)
    with torch.no_grad():
        for n in (12, 24, 32, 40, 64):
            want = rederived_forward(sd, conf, io["input.x"], n, semantics)
            torch.testing.assert_close(model(io["input.x"], tokens=n).unsqueeze(1), want, atol=ATOL, rtol=0)


def test_anytime_read_outs_equal_separate_runs_under_hub_rules(tmp_path):
    """Under the hub rules a pass above the maximum rescales RoPE for every latent, and latents past
    the last granularity see all latents: such counts get their own pass, never a prefix read-out."""
    model = load_reference(hub_dir(tmp_path, "classification"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_anytime(x, tokens=48, depths=[2, 4], token_counts=[8, 16, 32, 40, 48])
        for i, d in enumerate(out.depths):
            for j, t in enumerate(out.tokens):
                torch.testing.assert_close(out.outputs[i, j], model(x, tokens=t, depth=d), atol=2e-6, rtol=0)
    assert not model.shares_pass(16, 48) and model.shares_pass(16, 32) and not model.shares_pass(40, 48)


def test_slim_model_runs_as_the_hub_above_the_maximum(tmp_path):
    model = load_reference(hub_dir(tmp_path, "classification"))
    x = torch.randn(2, 3, 32, 32)
    static = model.slim(48, 3, 48)
    assert static.cfg.rope_len == 32 and static.cfg.rope_scaling == "ntk"
    with torch.no_grad():
        torch.testing.assert_close(static(x), model(x, tokens=48, depth=3, width=48), atol=2e-6, rtol=0)


def test_unknown_table_length_is_refused_above_the_maximum(data):
    """Training-code arguments without max_latent_tokens_mult: the table length is not assumed."""
    sd, io = data["classification"]
    conf = json.loads((FIXTURE / "config.json").read_text())["classification"]
    conf = {**conf, "AdaPercevierConfig": {k: v for k, v in conf["AdaPercevierConfig"].items() if k != "max_latent_tokens_mult"}}
    model = load_reference(FIXTURE / "classification.safetensors", conf)
    assert model.cfg.max_latents_mult is None and model.cfg.max_tokens == 32
    with torch.no_grad():
        torch.testing.assert_close(model(io["input.x"], tokens=32).unsqueeze(1), io["logits.tokens32.matfull.depth4"], atol=ATOL, rtol=0)
    no_rule = r"tokens must be an int in \[1, 32\].*got 33; this model's RoPE table has 32 positions and no rule"
    with pytest.raises(ValueError, match=no_rule):
        model(io["input.x"], tokens=33)
    # the same flat arguments forced to the training semantics: refused above the maximum too
    forced = load_reference(FIXTURE / "classification.safetensors", hub_config("classification"), semantics="training")
    with pytest.raises(ValueError, match=r"got 40; this model's RoPE table has 32 positions"):
        forced(io["input.x"], tokens=40)


def test_library_masks_follow_both_rules():
    from adaperceiver.models.masks import token_block_mask

    for grans in ([8, 16, 32], [4, 8], [3, 5, 9, 16]):
        for n in range(1, 41):
            for beyond, want in (("first_gk", training_mask(n, grans)), ("all", hub_mask(n, grans))):
                got = token_block_mask(n, grans, beyond=beyond)
                got = torch.ones(n, n, dtype=torch.bool) if got is None else got
                assert torch.equal(got, want), (grans, n, beyond)
