"""Run by tests/test_ddp.py under torchrun: train a few steps, then gather every rank's parameters.

Usage: torchrun --nproc_per_node=N tests/helpers/ddp_worker.py OUT_DIR [accum_steps]
Rank 0 writes OUT_DIR/params_rank{r}.pt for every rank r (from an all_gather) and the run itself.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from adaperceiver.training import distributed
from adaperceiver.tasks import get_task
from adaperceiver.training import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_ddp import ddp_config  # noqa: E402  (the shared run settings)


def main() -> None:
    out = Path(sys.argv[1])
    accum = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    info = distributed.setup("cpu")
    cfg = ddp_config(out, name="ddp", accum_steps=accum)
    result = Trainer(cfg, get_task("classification"), dist_info=info).fit()
    flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
    if info.is_main:
        for r, t in enumerate(gathered):
            torch.save(t, out / f"params_rank{r}.pt")
    distributed.teardown()


if __name__ == "__main__":
    main()
