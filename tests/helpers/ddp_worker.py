"""Run by tests/test_ddp.py under torchrun: train a few steps, then gather every rank's parameters.

Usage: torchrun --nproc_per_node=N tests/helpers/ddp_worker.py TRAIN_CONFIG_JSON
TRAIN_CONFIG_JSON holds ``TrainConfig.to_dict()``. Rank 0 writes the run and OUT_DIR/params_rank{r}.pt
for every rank r (from an all_gather), OUT_DIR being the config's ``out_dir``.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from adaperceiver.tasks import get_task
from adaperceiver.training import TrainConfig, Trainer, distributed


def main() -> None:
    cfg = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
    out = Path(cfg.out_dir)
    info = distributed.setup("cpu")
    result = Trainer(cfg, get_task("classification"), dist_info=info).fit()
    flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
    if info.is_main:
        for r, t in enumerate(gathered):
            torch.save(t, out / f"params_rank{r}.pt")
    dist.barrier()  # no rank destroys the gloo group while its peer still works (gloo then aborts the process)
    distributed.teardown()


if __name__ == "__main__":
    main()
