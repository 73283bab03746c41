"""Per-input policy: reward tables from anytime passes, REINFORCE, grouped inference, comparators."""

from __future__ import annotations

import json

import pytest
import torch

from adaperceiver import build_model, save_pretrained
from adaperceiver.adapt.policy import (
    ActionSpace,
    ConfigPolicy,
    Outcomes,
    PolicyClassifier,
    PolicyConfig,
    PolicyTrainConfig,
    TrainLog,
    collect_outcomes,
    configuration_flops,
    configuration_latency,
    evaluate_comparators,
    load_policy,
    run_from_patches,
    run_mixed,
    save_policy,
    train_policy,
    write_results,
)
from adaperceiver.errors import UserError
from adaperceiver.evaluation.cost import flop_counter

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(loud_init, tiny_config):
    torch.manual_seed(0)
    return loud_init(build_model(tiny_config(depth=2, token_grans=(4, 8, 16), widths=(16, 32)))).eval()


def data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_outcome_table_equals_individual_runs(model):
    xs, ys = data()
    out = collect_outcomes(model, (xs, ys), batch_size=20)  # batches of uneven size
    space = out.space
    assert space == ActionSpace((4, 8, 16), (1, 2), (16, 32)) and out.ce.shape == (48, 3, 2, 2)
    with torch.no_grad():
        for i, t in enumerate(space.tokens):
            for j, d in enumerate(space.depths):
                for k, w in enumerate(space.widths):
                    logits = model(xs, tokens=t, depth=d, width=w)
                    assert torch.equal(out.correct[:, i, j, k], logits.argmax(-1) == ys)
                    ce = torch.nn.functional.cross_entropy(logits, ys, reduction="none")
                    torch.testing.assert_close(out.ce[:, i, j, k], ce, atol=1e-4, rtol=0)
    assert len(collect_outcomes(model, (xs, ys), batch_size=20, limit=30)) == 30


def test_flops_table_is_monotone(model):
    cost = configuration_flops(model, ActionSpace.of(model))
    assert (cost.diff(dim=0) > 0).all() and (cost.diff(dim=1) > 0).all() and (cost.diff(dim=2) > 0).all()


def synthetic_outcomes(model, n=256):
    """Easy images (bright) are right in every configuration; hard ones (dark) only at full depth."""
    g = torch.Generator().manual_seed(1)
    easy = torch.arange(n) % 2 == 0
    images = 0.3 * torch.randn(n, 3, 16, 16, generator=g) + torch.where(easy, 1.5, -1.5).view(-1, 1, 1, 1)
    space = ActionSpace.of(model)
    correct = torch.ones(n, *space.shape, dtype=torch.bool)
    correct[~easy, :, :-1, :] = False
    ce = torch.where(correct, 0.05, 3.0)
    return Outcomes(images, torch.zeros(n, dtype=torch.long), ce, correct, space), easy


def test_policy_moves_to_cheap_configurations_as_lambda_grows(model):
    outcomes, easy = synthetic_outcomes(model)
    cost = configuration_flops(model, outcomes.space)
    norm = cost / cost.max()
    chosen_cost, depth_hard, depth_easy = [], [], []
    for lam in (0.0, 10.0, 100.0):
        cfg = PolicyTrainConfig(lam=lam, epochs=25, batch_size=64, lr=3e-3, entropy=0.003)
        policy = train_policy(model, outcomes, cost, cfg, log=TrainLog())
        with torch.no_grad():
            a = policy.choose(model.patch_embed(outcomes.images)[0])
        chosen_cost.append(float(norm[a[:, 0], a[:, 1], a[:, 2]].mean()))
        depth_hard.append(float(a[~easy, 1].float().mean()))
        depth_easy.append(float(a[easy, 1].float().mean()))
    assert chosen_cost[0] > chosen_cost[1] > chosen_cost[2], chosen_cost
    assert chosen_cost[2] == pytest.approx(float(norm.min()))  # the cheapest configuration for everyone
    # at moderate cost the policy is per input: shallow for easy images, full depth for hard ones
    assert depth_hard[1] == 1.0 and depth_easy[1] == 0.0
    assert depth_hard[0] == 1.0  # without a cost, hard images keep the depth they need


def test_policy_classifier_runs_each_choice_exactly(model):
    xs, _ = data(12)
    policy = ConfigPolicy.for_model(model)
    with torch.no_grad():  # random heads: several different configurations in one batch
        for head in policy.heads:
            head.weight.normal_(std=3.0)
    outs = {g: PolicyClassifier(model, policy, group=g)(xs) for g in PolicyClassifier.GROUPS}
    out = outs["mixed"]
    chosen = {tuple(a) for a in out.actions.tolist()}
    assert len(chosen) > 1 and len({a[0] for a in chosen}) > 1 and len({a[1] for a in chosen}) > 1
    assert len({a[2] for a in chosen}) > 1  # tokens, depths and widths all differ inside the batch
    with torch.no_grad():
        for g, o in outs.items():  # every grouping gives each image its own configuration's output
            assert torch.equal(o.actions, out.actions)
            for x, a, y in zip(xs, o.actions, o.logits):
                t, d, w = policy.space.config(*a.tolist())
                torch.testing.assert_close(y, model(x[None], tokens=t, depth=d, width=w)[0], atol=1e-5, rtol=0, msg=g)
        patches, grid = model.patch_embed(xs)
        torch.testing.assert_close(run_from_patches(model, patches, grid, 8, 1, 16), model(xs, tokens=8, depth=1, width=16),
                                   atol=1e-6, rtol=0)


def test_pooled_policy_and_one_configuration_batches(model):
    """num_blocks=0 pools the projected patches (order of patches irrelevant, few FLOPs); a batch that chose one
    configuration runs as one plain call of it, at batch 1 and above."""
    xs, _ = data(5)
    pooled = ConfigPolicy.for_model(model, cfg=PolicyConfig(num_blocks=0))
    mixer = ConfigPolicy.for_model(model)
    with torch.no_grad():
        for p in (pooled, mixer):
            p.head("depth").bias.copy_(torch.tensor([2.0, 0.0]))  # depth 1 for everyone
            p.head("tokens").bias.copy_(torch.tensor([0.0, 3.0, 0.0]))  # 8 tokens
        patches, _ = model.patch_embed(xs)
        shuffled = patches[:, torch.randperm(patches.shape[1])]
        torch.testing.assert_close(pooled(shuffled).tokens, pooled(patches).tokens, atol=1e-5, rtol=0)
        for p in (pooled, mixer):
            out = PolicyClassifier(model, p)(xs)
            assert {tuple(a) for a in out.actions.tolist()} == {(1, 0, 0)}
            torch.testing.assert_close(out.logits, model(xs, tokens=8, depth=1, width=16), atol=1e-6, rtol=0)
            one = PolicyClassifier(model, p)(xs[:1])
            torch.testing.assert_close(one.logits, model(xs[:1], tokens=8, depth=1, width=16), atol=1e-6, rtol=0)
    with torch.enable_grad(), flop_counter() as pooled_count:
        pooled(patches)
    with torch.enable_grad(), flop_counter() as mixer_count:
        mixer(patches)
    assert 0 < pooled_count.get_total_flops() < mixer_count.get_total_flops() / 3
    with pytest.raises(UserError, match="num_blocks"):
        PolicyConfig(num_blocks=-1)


def test_policy_trained_on_a_latency_cost(model):
    """Any cost table works: measured ms per image (what wall-clock savings need) instead of FLOPs."""
    xs, ys = data(40)
    outcomes = collect_outcomes(model, (xs, ys))
    lat = configuration_latency(model, outcomes.space, batch_size=2, repeats=1)
    assert lat.shape == outcomes.space.shape and bool((lat > 0).all()) and bool(torch.isfinite(lat).all())
    cheap = train_policy(model, outcomes, lat, PolicyTrainConfig(lam=50.0, epochs=3, batch_size=20))
    with torch.no_grad():
        acts = cheap.choose(model.patch_embed(xs)[0])
    chosen = lat[acts[:, 0], acts[:, 1], acts[:, 2]]
    assert float(chosen.mean()) < float(lat.mean())  # a heavy time charge picks faster-than-average configurations


@pytest.fixture(scope="module")
def mean_model(loud_init, tiny_config):
    """readout="mean": no output query and no write attention (the tiny_v2 / tiny_v3 presets)."""
    torch.manual_seed(0)
    return loud_init(build_model(tiny_config(depth=2, token_grans=(4, 8, 16), widths=(16, 32), readout="mean",
                                             head_norm=True))).eval()


def test_policy_classifier_with_the_mean_read_out(mean_model):
    xs, _ = data(7)
    policy = ConfigPolicy.for_model(mean_model, cfg=PolicyConfig(num_blocks=0))
    with torch.no_grad():
        for head in policy.heads:
            head.weight.normal_(std=3.0)
        res = PolicyClassifier(mean_model, policy)(xs)
        assert len({tuple(a) for a in res.actions.tolist()}) > 1  # several configurations in one batch
        for x, a, y in zip(xs, res.actions, res.logits):
            t, d, w = policy.space.config(*a.tolist())
            torch.testing.assert_close(y, mean_model(x[None], tokens=t, depth=d, width=w)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["model", "mean_model"])
def test_run_mixed_sorts_and_restores_the_batch(which, request):
    model = request.getfixturevalue(which)
    xs, _ = data(7)
    tokens, depths, widths = [4, 16, 8, 16, 4, 8, 16], [1, 2, 2, 1, 2, 1, 2], [16, 32, 32, 16, 16, 32, 32]
    with torch.no_grad():
        patches, grid = model.patch_embed(xs)
        out = run_mixed(model, patches, grid, tokens, depths, widths)
        for i in range(7):
            torch.testing.assert_close(out[i], model(xs[i:i + 1], tokens=tokens[i], depth=depths[i], width=widths[i])[0],
                                       atol=1e-5, rtol=0)
        # one shared configuration: the plain path (no masks), equal to the model's batched call
        torch.testing.assert_close(run_mixed(model, patches, grid, [8] * 7, [2] * 7, [16] * 7),
                                   model(xs, tokens=8, depth=2, width=16), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="group must be one of"):
        PolicyClassifier(model, ConfigPolicy.for_model(model), group="fast")


def test_comparators_and_outputs(model, tmp_path):
    xs, ys = data(40)
    outcomes = collect_outcomes(model, (xs, ys))
    cost = configuration_flops(model, outcomes.space)
    policy = train_policy(model, outcomes, cost, PolicyTrainConfig(lam=0.2, epochs=2, batch_size=20))
    res = evaluate_comparators(model, outcomes, cost, {"lam=0.2": policy}, taus=(0.3, 0.999),
                               latency_batch_sizes=(), latency_images=8, latency_repeats=1)
    rows = res["rows"]
    fixed = [r for r in rows if r["method"] == "fixed"]
    full = next(r for r in rows if r["method"] == "full")
    oracle = next(r for r in rows if r["method"] == "oracle")
    assert len(fixed) == 12 and (full["tokens"], full["depth"], full["width"]) == (16, 2, 32)
    assert oracle["acc1"] >= max(r["acc1"] for r in fixed) and not oracle["deployable"]
    assert oracle["gflops"] <= full["gflops"]
    pol = next(r for r in rows if r["method"] == "policy")
    assert pol["acc1"] == pytest.approx(pol["table_acc1"])  # the grouped run agrees with the reward table
    # every method's top-1 is an exact count ratio, so a policy that ties a fixed configuration compares equal
    assert all(r["acc1"] == 100.0 * round(r["acc1"] * 40 / 100) / 40 for r in rows)
    assert pol["gflops"] > pol["policy_gflops"] > 0  # the policy's own FLOPs are included
    ee = [r for r in rows if r["method"] == "early_exit"]
    assert ee[0]["mean_exit_depth"] <= ee[1]["mean_exit_depth"]
    assert not any(k.startswith("latency") for r in rows for k in r)  # timing is skipped when asked
    s = res["summary"]["parity_fixed"]
    assert s is not None and s["gflops"] <= full["gflops"] and s["acc1"] >= full["acc1"] - 0.1
    write_results(res, tmp_path)
    assert (tmp_path / "accuracy_vs_gflops.png").stat().st_size > 1000
    assert json.loads((tmp_path / "comparators.json").read_text())["summary"]["num_images"] == 40
    assert "method,setting" in (tmp_path / "comparators.csv").read_text().splitlines()[0]


def test_save_load_and_errors(model, tmp_path):
    policy = ConfigPolicy.for_model(model)
    with torch.no_grad():
        policy.head("depth").bias.copy_(torch.tensor([0.0, 1.0]))
    save_policy(policy, tmp_path / "p", extra={"lam": 0.3})
    loaded, meta = load_policy(tmp_path / "p")
    assert meta["lam"] == 0.3 and loaded.space == policy.space
    p = torch.randn(2, 16, 32)
    assert torch.equal(loaded.choose(p), policy.choose(p))
    with pytest.raises(ValueError, match=r"patch embeddings \(B, 16, 32\)"):
        policy(torch.randn(2, 36, 32))
    with pytest.raises(ValueError, match="reward must be one of"):
        PolicyTrainConfig(reward="accuracy")
    with pytest.raises(ValueError, match="depth must be an int"):
        ConfigPolicy.for_model(model, ActionSpace((4,), (1, 5), (16,)))
    with pytest.raises(FileNotFoundError, match="policy.json"):
        load_policy(tmp_path / "nothing")


def test_policy_saved_by_0_2_0_loads(model, tmp_path):
    """0.2.0 named one head per axis (head_tokens, head_depth, head_width); those files still load."""
    from adaperceiver.checkpoint import save_state_dict

    policy = ConfigPolicy.for_model(model)
    with torch.no_grad():
        policy.head("width").bias.copy_(torch.tensor([0.0, 2.0]))
    save_policy(policy, tmp_path / "p")
    names = {f"heads.{i}.": f"head_{axis}." for i, axis in enumerate(("tokens", "depth", "width"))}
    old = {next((names[p] + k[len(p):] for p in names if k.startswith(p)), k): v for k, v in policy.state_dict().items()}
    assert "head_width.bias" in old and not any(k.startswith("heads.") for k in old)
    save_state_dict(tmp_path / "p" / "policy.safetensors", old, metadata={"format": "pt"})
    loaded, _ = load_policy(tmp_path / "p")
    p = torch.randn(3, 16, 32)
    assert torch.equal(loaded.choose(p), policy.choose(p)) and loaded.choose(p)[:, 2].eq(1).all()


def test_policy_cli(model, tmp_path, monkeypatch, capsys):
    from adaperceiver.cli import main
    from adaperceiver.cli import policy as policy_cmd

    xs, ys = data(24)
    monkeypatch.setattr(policy_cmd, "load_dataset", lambda spec, split, *model_and_args: torch.utils.data.TensorDataset(xs, ys))
    save_pretrained(model, tmp_path / "run")
    assert main(["policy", "train", "--model", str(tmp_path / "run"), "--lams", "0.1", "1", "--epochs", "1",
                 "--policy-blocks", "0", "--cost", "latency", "--out", str(tmp_path / "pol")]) == 0
    assert (tmp_path / "pol" / "lam1" / "policy.safetensors").is_file()
    assert load_policy(tmp_path / "pol" / "lam1")[0].cfg.num_blocks == 0
    assert main(["policy", "eval", "--model", str(tmp_path / "run"), "--policies", str(tmp_path / "pol" / "lam0.1"),
                 str(tmp_path / "pol" / "lam1"), "--taus", "0.9", "--latency-batch-sizes",
                 "--out", str(tmp_path / "eval")]) == 0
    assert "full:" in capsys.readouterr().out
    assert (tmp_path / "eval" / "comparators.csv").is_file()
    # every method timed on the bf16 copy: same accuracies, latencies of the fast model
    assert main(["policy", "eval", "--model", str(tmp_path / "run"), "--policies", str(tmp_path / "pol" / "lam1"),
                 "--taus", "0.9", "--latency-batch-sizes", "2", "--latency-images", "4", "--dtype", "bfloat16",
                 "--out", str(tmp_path / "eval16")]) == 0
    res = json.loads((tmp_path / "eval16" / "comparators.json").read_text())
    assert res["timed_as"] == {"dtype": "bfloat16", "compile": False}
    assert all(r["latency_ms_b2"] > 0 for r in res["rows"]) and {r["method"] for r in res["rows"]} >= {"full", "policy"}
