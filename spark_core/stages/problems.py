"""Pipeline stages: each a function of (config, run directory[, iteration]) that reads what
earlier stages wrote, writes its own table parts atomically, then a manifest.

A stage whose manifest matches the config is skipped, so a killed run restarts where it
stopped. Prefect tasks (tasks/) wrap these functions one to one; nothing here imports Prefect.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from spark_core.config import SparkConfig, config_hash
from spark_core.data.problems import problem_sets
from spark_core.data.store import clean_staging, read_manifest, stage_complete, write_manifest, write_table

log = logging.getLogger(__name__)


def prepare_problems(cfg: SparkConfig, run_dir: Path) -> dict:
    """Stage `problems`: generate or load the problems, split them, write the `problems` table.

    Returns the stage manifest (row counts per split under `rows`).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Only what this stage depends on: a change of learning rate must not redo the problems.
    key = config_hash({"seed": cfg.seed, "problems": cfg.problems.model_dump(mode="json")})
    if stage_complete(run_dir, "problems", None, key):
        log.info("problems: complete for config %s, skipped", key)
        return read_manifest(run_dir, "problems", None)
    removed = clean_staging(run_dir)
    if removed:
        log.warning("removed %d half-written file(s) left by an interrupted write", removed)
    start = time.monotonic()
    train, held = problem_sets(cfg.problems, cfg.seed)
    rows = [p.to_row() | {"split": "train"} for p in train] + [p.to_row() | {"split": "held_out"} for p in held]
    path = write_table(run_dir, "problems", rows, part="problems")
    write_manifest(
        run_dir, "problems", None, key,
        outputs={"problems": path},
        rows={"train": len(train), "held_out": len(held)},
        inputs={"source": cfg.problems.source},
        seconds=time.monotonic() - start,
    )
    return read_manifest(run_dir, "problems", None)
