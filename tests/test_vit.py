"""The static ViT: mean-pooled or class-token read-out; teacher features are the patch tokens only."""

from __future__ import annotations

import pytest
import torch

from adaperceiver.models.vit import StaticViT, ViTConfig
from adaperceiver.training.teachers import from_static_vit


def vit(pool):
    torch.manual_seed(0)
    return StaticViT(ViTConfig(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=4,
                               mlp_ratio=2.0, num_classes=5, pool=pool)).eval()


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_pooling_and_teacher_features(pool):
    m = vit(pool)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (3, 16 + m.num_prefix_tokens, 32)
        logits = m(x)
        want = feats[:, 0] if pool == "cls" else feats.mean(1)
        torch.testing.assert_close(logits, m.head(want))
    out = from_static_vit(m)(x)
    assert out.features.shape == (3, 16, 32)  # the class token is not a patch feature
    torch.testing.assert_close(out.features, feats[:, m.num_prefix_tokens:])


def test_class_token_is_learned_and_used():
    m = vit("cls")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = m(x)
        m.cls_token.add_(torch.randn(m.cls_token.shape))  # (a constant shift would vanish in the LayerNorms)
        assert (m(x) - before).abs().max() > 1e-3
    assert "cls_token" not in dict(vit("mean").named_parameters())
    with pytest.raises(ValueError, match="pool must be 'mean' or 'cls'"):
        ViTConfig(pool="max")
