import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def tiny_config(**kw):
    """A small model with non-trivial LayerScale so that every block matters in the tests."""
    from adaperceiver import AdaPerceiverConfig

    base = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, num_heads=4, depth=3, ffn_ratio=2.57,
                num_latents=16, token_grans=(4, 8, 12, 16), widths=(16, 24, 32), ls_init=0.5, num_classes=5)
    base.update(kw)
    return AdaPerceiverConfig(**base)


# every learning-efficiency option on (docs/training.md, "Learning efficiency"); the model tests run with them too
LEARNING_OPTIONS = dict(embed_residual=True, latent_pos_std=0.02, read_mlp=True, head_norm=True)


def variant_config(name):
    """``"classification"`` / ``"dense"``, optionally ``+options``: the learning options on (mean read-out
    for classification)."""
    task, _, opts = name.partition("+")
    extra = dict(LEARNING_OPTIONS, readout="mean" if task == "classification" else "query") if opts else {}
    return tiny_config(task=task, num_classes=5 if task == "classification" else 6, **extra)


def loud_init(model, seed=0):
    """Re-initialise with fan-in scaled weights so that masks, RoPE and widths visibly matter
    (the default 0.02 init makes most configurations nearly equal and would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "pos_embed" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("gamma") or (p.dim() == 1 and "norm" in name and name.endswith("weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_((0.5 if "pos_embed" in name else 0.1) * torch.randn(p.shape, generator=g))
    return model
