"""Structure the docs promise (docs/architecture.md): one executor, small modules, the adaptive-model protocol."""

import re
from pathlib import Path

from adaperceiver.evaluation import active_parameters
from adaperceiver.models import create_model
from adaperceiver.models.protocol import AdaptiveModel, CountsActiveParameters
from adaperceiver.models.vit import StaticViT, ViTConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "adaperceiver"


def test_only_models_touch_the_blocks():
    hits = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.parent.name != "models"
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bmodel\w*\.blocks\b|\.blocks\[", line)]
    assert not hits, f"blocks indexed outside models/: {hits}"


def test_no_module_above_450_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long


def test_adaperceiver_speaks_the_protocol_and_counts_its_parameters():
    model = create_model("adaperceiver_tiny", num_classes=3)
    assert isinstance(model, AdaptiveModel) and isinstance(model, CountsActiveParameters)
    full = active_parameters(model)
    assert active_parameters(model, (8, 1, 32)) < active_parameters(model, (8, 2, 32)) < full
    vit = StaticViT(ViTConfig(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2))
    assert not isinstance(vit, CountsActiveParameters)
    assert active_parameters(vit) == sum(p.numel() for p in vit.parameters())


def test_objective_metrics_stay_on_the_device_as_scalars():
    import torch

    from adaperceiver.training.objective import Batch, JointObjective, ObjectiveConfig

    model = create_model("adaperceiver_tiny", num_classes=3, embed_dim=16, num_heads=2, widths=(8, 16))
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    loss, metrics = JointObjective(ObjectiveConfig())(model, Batch(x, y), torch.Generator().manual_seed(0))
    assert {"loss", "task", "task_full", "acc_full"} <= set(metrics)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in metrics.values())
    torch.testing.assert_close(metrics["loss"], loss.detach())
