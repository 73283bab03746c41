"""FLOPs are measured with torch.utils.flop_counter, and attention is actually counted."""

import torch

from adaperceiver import build_model
from adaperceiver.evaluation.cost import count_flops, flops_by_op


def test_attention_flops_are_counted_and_quadratic(tiny_config):
    model = build_model(tiny_config(num_latents=64, token_grans=(16, 32, 64), max_latents_mult=1)).eval()
    x = torch.randn(1, 3, 16, 16)
    by_op = {n: flops_by_op(model, x, tokens=n) for n in (16, 32, 64)}
    attn = {n: sum(v for k, v in ops.items() if "attention" in k) for n, ops in by_op.items()}
    assert all(v > 0 for v in attn.values()), attn
    # latent self-attention grows ~N^2 (read/write cross-attention only ~N): ratio between 2 and 4
    assert 2.5 < attn[64] / attn[32] <= 4.0
    # exact for one block's self-attention: 4 * B * H * N * N * head_dim
    one = build_model(tiny_config(depth=1)).eval()
    d, h = one.cfg.embed_dim, one.cfg.num_heads
    a16 = sum(v for k, v in flops_by_op(one, x, tokens=16).items() if "attention" in k)
    a8 = sum(v for k, v in flops_by_op(one, x, tokens=8).items() if "attention" in k)
    # difference between N=16 and N=8: self-attn 4*h*(256-64)*hd + read 4*h*(16-8)*P*hd + write 4*h*(16-8)*hd
    hd, p = d // h, 16
    assert a16 - a8 == 4 * h * hd * ((256 - 64) + (16 - 8) * p + (16 - 8))


def test_flops_shrink_along_every_axis(tiny_config):
    model = build_model(tiny_config()).eval()
    x = torch.randn(2, 3, 16, 16)
    full = count_flops(model, x)
    assert count_flops(model, x, tokens=8) < full
    assert count_flops(model, x, depth=1) < full
    assert count_flops(model, x, width=16) < full
    assert count_flops(model, x, tokens=4, depth=1, width=16) < min(count_flops(model, x, tokens=8), count_flops(model, x, depth=2))
