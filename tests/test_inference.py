"""Fast inference: for_inference (dtype, slim configurations, compiled graphs reused)."""

from __future__ import annotations

import os

import pytest
import torch

from adaperceiver import build_model
from adaperceiver.models.inference import InferenceModel, for_inference, parse_dtype

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(loud_init, tiny_config):
    torch.manual_seed(0)
    return loud_init(build_model(tiny_config())).eval()


def images(n=6, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_for_inference_float32_equals_the_model(model):
    fast = model.for_inference(dtype=torch.float32)
    x = images()
    with torch.no_grad():
        for cfg in [(16, 3, 32), (8, 2, 16), (4, 1, 24)]:
            torch.testing.assert_close(fast(x, *cfg), model(x, *cfg), atol=1e-5, rtol=0)
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=0)  # defaults: the full configuration
    assert fast.configuration(8, 2, 16) is fast.configuration(8, 2, 16)  # built once
    static = fast.configuration(8, 2, 16)
    assert len(static.blocks) == 2 and static.blocks[0].mlp.fc1.out_features == int(16 * 2.57)
    assert isinstance(static.blocks[0].ls1, torch.nn.Identity) and hasattr(model.blocks[0].ls1, "gamma")  # folded


def test_for_inference_bfloat16_agrees_with_float32(model):
    fast = model.for_inference(dtype="bf16")
    assert fast.dtype == torch.bfloat16 and next(fast.configuration(8, 2, 16).parameters()).dtype == torch.bfloat16
    x = images(32)
    with torch.no_grad():
        ref, out = model(x, 8, 2, 16), fast(x, 8, 2, 16)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    anytime = fast.forward_anytime(x, depths=[1, 3])
    assert anytime.outputs.dtype == torch.float32 and anytime.outputs.shape == (2, 4, 32, 5)


def test_for_inference_errors(model):
    with pytest.raises(ValueError, match="dtype must be one of"):
        for_inference(model, dtype="int4")
    with pytest.raises(ValueError, match="dtype must be one of"):
        parse_dtype(torch.int8)
    fast = for_inference(model, dtype=torch.float32)
    with pytest.raises(ValueError, match="width must be an int"):
        fast(images(2), 8, 2, [16, 32])
    with pytest.raises(ValueError, match="depth must be an int in"):
        fast(images(2), 8, 9, 16)
    with pytest.raises(ValueError, match="needs an AdaPerceiver"):
        InferenceModel(torch.nn.Linear(2, 2))


def test_compiled_configurations_are_reused_not_recompiled(model):
    """Each configuration gets its own graph per batch size, built once; later calls reuse it.

    The eager backend runs dynamo (tracing, guards, the cache) without inductor's code generation,
    so this stays fast; ``ADAPERCEIVER_TEST_INDUCTOR=1`` runs it with inductor too.
    """
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    backend = "inductor" if os.environ.get("ADAPERCEIVER_TEST_INDUCTOR") else "eager"
    fast = for_inference(model, dtype=torch.float32, compile=True, backend=backend)
    # more configurations than dynamo's per-code cache limit (8): none may fall back to eager
    cfgs = [(t, 1, w) for t in (4, 8, 12, 16) for w in (16, 24)] + [(16, 3, 32)]
    x2, x3 = images(2), images(3)
    with torch.no_grad():
        for cfg in cfgs:
            fast(x2, *cfg)
        fast(x3, 8, 2, 16)
        graphs = counters["stats"]["unique_graphs"]
        assert graphs == len(cfgs) + 1
        for _ in range(2):
            for cfg in cfgs:
                torch.testing.assert_close(fast(x2, *cfg), model(x2, *cfg), atol=1e-4, rtol=0)
            fast(x3, 8, 2, 16)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing recompiled
    assert not counters["recompiles"] and counters["frames"]["ok"] == counters["frames"]["total"]


def test_compiled_configurations_are_built_with_frozen_weights(model):
    """inductor's ``freezing`` (weights as constants, so Linear layers become prepacked oneDNN
    kernels) is read from its global config at compile time, which ``torch.compile(options=...)``
    does not set: the runner must hold it on while the backend compiles."""
    import torch._inductor.config as inductor_config

    seen = []

    def backend(gm, example_inputs):  # records what inductor would see, runs the graph eagerly
        seen.append(inductor_config.freezing)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        fast = for_inference(model, dtype=torch.float32, compile=True, backend=backend)
        torch.testing.assert_close(fast(images(2), 8, 2, 16), model(images(2), 8, 2, 16), atol=1e-5, rtol=0)
        assert seen == [True] and inductor_config.freezing is False  # on while compiling, restored after
        unfrozen = for_inference(model, compile=True, backend=backend, compile_options={"freezing": False})
        unfrozen(images(2), 8, 2, 16)
    assert seen == [True, False]
