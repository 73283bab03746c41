"""Library calls leave the caller's model as they found it: mode, device."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from adaperceiver import build_model
from adaperceiver.adapt.policy import ActionSpace, collect_outcomes, configuration_flops
from adaperceiver.evaluation import measure_latency, run_sweep
from adaperceiver.models.util import eval_mode
from adaperceiver.tasks import evaluate_classification


def test_eval_mode_restores_each_module_even_on_error():
    a, b = torch.nn.Dropout(), torch.nn.Dropout()
    b.eval()
    with eval_mode(a, b):
        assert not a.training and not b.training
    assert a.training and not b.training
    with pytest.raises(RuntimeError), eval_mode(a):
        raise RuntimeError("inside")
    assert a.training


def test_evaluation_restores_training_mode(tiny_config):
    model = build_model(tiny_config(depth=2, token_grans=(8, 16), widths=(16, 32))).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    evaluate_classification(model, loader, torch.device("cpu"))
    measure_latency(model, (8, 1, 16), 1, warmup=0, repeats=1)
    outcomes = collect_outcomes(model, TensorDataset(x, y))
    configuration_flops(model, ActionSpace.of(model))
    assert model.training and outcomes.ce.shape[0] == 4


def test_run_sweep_does_not_move_the_model(tiny_config):
    model = build_model(tiny_config(depth=1, token_grans=(16,), widths=(32,)))
    loader = DataLoader(TensorDataset(torch.randn(2, 3, 16, 16), torch.randint(0, 5, (2,))), batch_size=2)
    with pytest.raises(ValueError, match="the model is on cpu, not meta"):
        run_sweep(model, loader, None, device="meta", progress=False)
    assert next(model.parameters()).device.type == "cpu"
