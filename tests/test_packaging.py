"""Packaging: the model works without the optional extras, and the library never imports the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

BLOCK_MATPLOTLIB = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib" or name.startswith("matplotlib."):
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
""")


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", BLOCK_MATPLOTLIB + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_model_and_library_work_without_matplotlib(tmp_path):
    proc = _run(f"""
        import torch
        import adaperceiver
        import adaperceiver.adapt.budget, adaperceiver.adapt.policy, adaperceiver.evaluation, adaperceiver.tasks
        model = adaperceiver.create_model("adaperceiver_tiny", img_size=16, in_chans=1, num_classes=3).eval()
        y = model(torch.randn(2, 1, 16, 16), tokens=8, depth=2)
        assert y.shape == (2, 3), y.shape
        adaperceiver.save_pretrained(model, {str(tmp_path / "m")!r})
        adaperceiver.from_pretrained({str(tmp_path / "m")!r})
        assert not any(m == "matplotlib" or m.startswith("matplotlib.") for m in sys.modules)
        assert not any(m.startswith("adaperceiver.cli") for m in sys.modules), "the library imported the CLI"
        try:
            adaperceiver.evaluation.plot_pareto([], {str(tmp_path / "p.png")!r}, "acc1")
        except ImportError as e:
            assert "adaperceiver[plot]" in str(e), e
        else:
            raise AssertionError("plot_pareto ran without matplotlib")
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_plots_leave_pyplot_alone(tmp_path):
    """Plots draw on their own Figure: no backend switch, no figure left open in pyplot."""
    import matplotlib

    from adaperceiver.evaluation import plot_pareto

    backend = matplotlib.get_backend()
    rows = [{"tokens": t, "depth": 1, "width": 8, "gflops": float(t), "acc1": 50.0 + t, "latency_ms_b1": t / 10,
             "pareto_gflops": True, "pareto_latency_b1": True} for t in (2, 4)]
    path = plot_pareto(rows, tmp_path / "p.png", "acc1")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == backend
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
