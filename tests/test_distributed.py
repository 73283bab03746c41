"""Data sharding for DDP: ranks split each global batch exactly, the order depends only on (seed, epoch)."""

import torch

from adaperceiver.training.distributed import (
    DistInfo,
    all_reduce_sums,
    epoch_permutation,
    launched_by_torchrun,
    rank_batch,
    setup,
)


def test_epoch_permutation_is_deterministic_and_changes_per_epoch():
    a, b = epoch_permutation(100, seed=1, epoch=0), epoch_permutation(100, seed=1, epoch=0)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, epoch_permutation(100, seed=1, epoch=1))
    assert not torch.equal(a, epoch_permutation(100, seed=2, epoch=0))


def test_rank_shares_partition_the_global_batch():
    batch = torch.arange(10, 21)  # 11 items over 3 ranks
    shares = [rank_batch(batch, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert torch.equal(torch.cat(shares), batch)
    assert sorted(len(s) for s in shares) == [3, 4, 4]
    assert torch.equal(rank_batch(batch, DistInfo()), batch)


def test_single_process_defaults(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_by_torchrun()
    info = setup()
    assert info == DistInfo() and info.is_main and not info.enabled
    assert all_reduce_sums({"loss": 2.0}, info) == {"loss": 2.0}
