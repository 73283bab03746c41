"""The joint objective: one backbone pass whose weighted read-outs equal separate per-configuration runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaperceiver import build_model
from adaperceiver.losses import kd_loss
from adaperceiver.training.objective import Batch, JointObjective, ObjectiveConfig, readout_grid_weights


@pytest.fixture
def model(loud_init, tiny_config):
    return loud_init(build_model(tiny_config())).eval()


def batch(b=6, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, 3, 16, 16, generator=g), torch.randint(0, classes, (b,), generator=g))


def test_readout_weights():
    w = readout_grid_weights((1, 2, 3), (4, 8), num_blocks=3)
    assert w.shape == (3, 2) and torch.isclose(w.sum(), torch.tensor(1.0))
    torch.testing.assert_close(w[:, 0] / w[0, 0], torch.tensor([1.0, 2.0, 3.0]))  # linear (i+1)/L
    u = readout_grid_weights((1, 2, 3), (4, 8), 3, "uniform", token_weights=(1, 3))
    torch.testing.assert_close(u, torch.tensor([[1.0, 3.0]] * 3) / 12)
    # full_token_weight scales the largest token count, whatever the number of granularities
    torch.testing.assert_close(readout_grid_weights((1, 2), (4, 8, 16), 2, full_token_weight=3.0),
                               readout_grid_weights((1, 2), (4, 8, 16), 2, token_weights=(1, 1, 3)))
    with pytest.raises(ValueError, match="full_token_weight must be in \\[0.01, 100\\]"):
        ObjectiveConfig(full_token_weight=0.0)
    with pytest.raises(ValueError, match="linear"):
        readout_grid_weights((1,), (4,), 1, "quadratic")
    with pytest.raises(ValueError, match="token_weights has 1"):
        readout_grid_weights((1,), (4, 8), 1, token_weights=(1,))
    with pytest.raises(ValueError, match="depth_weighting"):
        ObjectiveConfig(depth_weighting="cubic")


def test_joint_loss_equals_separate_runs(model):
    """The one-pass loss equals the weighted CE of separate (tokens, depth, width) calls per sample."""
    b = batch()
    obj = JointObjective(ObjectiveConfig(label_smoothing=0.1, token_weights=(1, 1, 2, 4)))
    loss, metrics = obj(model, b, torch.Generator().manual_seed(3))
    widths = obj.sample_widths(model, 6, torch.Generator().manual_seed(3))
    assert set(widths.tolist()) <= set(model.cfg.widths)
    depths, tokens = obj.readouts(model)
    assert depths == (1, 2, 3) and tokens == (4, 8, 12, 16)
    w = obj.weights(model)
    expected = torch.zeros(())
    with torch.no_grad():
        for i, d in enumerate(depths):
            for j, t in enumerate(tokens):
                logits = torch.cat([model(b.images[s:s + 1], tokens=t, depth=d, width=int(widths[s]))
                                    for s in range(6)])
                expected += w[i, j] * F.cross_entropy(logits, b.targets, label_smoothing=0.1)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    assert metrics["loss"] == pytest.approx(float(expected), abs=1e-5)
    assert set(metrics) >= {"loss", "task", "task_full", "acc_full"}


def test_one_backbone_pass_per_batch(model):
    calls = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda *a: calls.append(1))
    JointObjective()(model, batch())
    assert len(calls) == model.num_blocks  # each block ran once, for all 3 x 4 read-outs


def test_widths_sampled_per_sample_and_reproducible(model):
    obj = JointObjective()
    a = obj.sample_widths(model, 300, torch.Generator().manual_seed(0))
    b = obj.sample_widths(model, 300, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and sorted(set(a.tolist())) == list(model.cfg.widths)
    assert JointObjective(ObjectiveConfig(sample_widths=False)).sample_widths(model, 4) is None
    with pytest.raises(ValueError, match="outside"):
        JointObjective(ObjectiveConfig(widths=(99,))).sample_widths(model, 4)


def test_custom_task_loss_matches_vectorised_ce(model):
    b = batch()
    fast, _ = JointObjective()(model, b, torch.Generator().manual_seed(1))
    slow, _ = JointObjective(task_loss=lambda p, t: F.cross_entropy(p, t))(model, b, torch.Generator().manual_seed(1))
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-6)


def test_static_objective_is_plain_ce(model):
    b = batch()
    loss, _ = JointObjective(ObjectiveConfig.static())(model, b)
    torch.testing.assert_close(loss, F.cross_entropy(model(b.images), b.targets), atol=1e-6, rtol=1e-6)


def test_kd_on_every_readout(model):
    b = batch()
    b.teacher_logits = torch.randn(6, 5)
    obj = JointObjective(ObjectiveConfig(ce_weight=0.0, kd_weight=2.0, kd_temperature=3.0, sample_widths=False))
    loss, metrics = obj(model, b)
    out = model.forward_anytime(b.images)
    expected = (kd_loss(out.outputs, b.teacher_logits, 3.0) * obj.weights(model)).sum()
    torch.testing.assert_close(loss, 2.0 * expected, atol=1e-5, rtol=1e-5)
    assert metrics["kd"] == pytest.approx(float(expected.detach()), rel=1e-5)
    b.teacher_logits = torch.randn(6, 7)
    with pytest.raises(ValueError, match="teacher logits"):
        obj(model, b)


class ScaledL2Hook(nn.Module):
    """An extra loss with its own parameter, like a feature-distillation head."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.seen = None

    def forward(self, out, batch, weights):
        self.seen = (out.outputs.shape, weights.shape, batch.images.shape[0])
        loss = self.scale * (out.outputs.pow(2).mean((-1, -2)) * weights).sum()
        return loss, {"l2": float(loss.detach())}


def test_extra_loss_hook_is_added_and_trained(model):
    b = batch()
    hook = ScaledL2Hook()
    obj = JointObjective(extra_losses=[hook])
    base, _ = JointObjective()(model, b, torch.Generator().manual_seed(0))
    loss, metrics = obj(model, b, torch.Generator().manual_seed(0))
    assert hook.seen == ((3, 4, 6, 5), (3, 4), 6)
    torch.testing.assert_close(loss, base + metrics["l2"], atol=1e-5, rtol=1e-5)
    assert [p is hook.scale for p in obj.parameters()] == [True]
    loss.backward()
    assert hook.scale.grad is not None and model.output_query.grad is not None
