"""Multi-process training on PyTorch's own stack: ``torchrun`` + ``torch.distributed`` (DDP).

Nothing here launches processes: ``torchrun --nproc_per_node=N -m adaperceiver train ...`` does.
A plain ``python -m adaperceiver train ...`` is the one-process case of the same code.

Data order is a pure function of ``(seed, epoch)``: every rank computes the same permutation of
the dataset and takes its slice of each *global* batch, so N processes with per-rank batch B/N
see exactly the samples one process with batch B sees, in the same steps.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError, first_line


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | torch.device | None = None, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group when started by torchrun (gloo on CPU, nccl on CUDA); else one process."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if info.world_size > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        timeout = datetime.timedelta(seconds=timeout_s)
        # torchrun's agent store outlives restarted workers: keys of a dead attempt (e.g. gloo's
        # peer addresses) would be read by the next one, so each attempt gets its own namespace.
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"adaperceiver/attempt_{attempt}", store)
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world,
                                timeout=timeout)
    return info


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parse_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)``, refusing an unknown name with a one-line error."""
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"device {name!r} is not a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps' "
                        f"({first_line(e)})") from None


def device_for(info: DistInfo, requested: str | None = None) -> torch.device:
    """``cuda:<local_rank>`` when CUDA is used, else the requested device or CPU."""
    if requested:
        dev = parse_device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {requested!r} is not available here (torch.cuda.is_available() is False); "
                            f"use 'cpu' or leave the device unset")
        if dev.type == "cuda" and dev.index is None:
            return torch.device("cuda", info.local_rank)
        return dev
    return torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The dataset order of one epoch: the same on every rank, different every epoch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=g)


def rank_batch(global_batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous share of one global batch of indices (sizes differ by at most one)."""
    n = global_batch.numel()
    start = (n * info.rank) // info.world_size
    stop = (n * (info.rank + 1)) // info.world_size
    return global_batch[start:stop]


def all_reduce_sums(values: dict[str, float], info: DistInfo, device: torch.device | None = None) -> dict[str, float]:
    """Sum a dict of floats over ranks (a no-op in one process); divide by counts yourself."""
    if not info.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = [
    "DistInfo", "all_reduce_sums", "barrier", "broadcast_object", "device_for", "epoch_permutation",
    "launched_by_torchrun", "parse_device", "rank_batch", "setup", "teardown"
]
