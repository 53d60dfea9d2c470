"""One process of a `train.processes` > 1 train stage, started by torchrun (never by hand):

    python -m torch.distributed.run --standalone --nproc-per-node P -m spark_core.model.train_worker \
        CONFIG.json RUN K PHASE RESULT.json

Joins the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank), runs
`iteration.train_period` (each process the same weights and batch, every P-th micro-batch,
gradients summed), and rank 0 writes the `updates` rows and the parameters each process held to RESULT.json
for the stage.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from spark_core.config import SparkConfig


def main(argv: list[str]) -> int:
    conf, run_dir, k, phase, result = argv
    cfg = SparkConfig.model_validate_json(Path(conf).read_text())
    cuda = torch.cuda.is_available() and cfg.rollout.device != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        from spark_core.stages.train import train_period

        report: dict = {}
        updates = train_period(cfg, Path(run_dir), int(k), phase, report=report)
        dist.barrier()  # rank 0 has saved: nobody reports success before the checkpoint is whole
        if dist.get_rank() == 0:
            Path(result).write_text(json.dumps({"updates": updates, **report}))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
