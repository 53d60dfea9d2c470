"""Closing an iteration: the `iteration` manifest (every stage's metrics, seconds, disk use,
placement of shards and processes), then the retention rule removes retired checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

from spark_core.config import SparkConfig
from spark_core.rundir import (
    DONE, METRIC_PREFIX, STAGES, checkpoint_dir, disk_use, fault, iteration_hash, kept_checkpoints, retired_checkpoints,
)
from spark_core.stages.rollout import shard_stage
from spark_core.stages.verify import verify_shard_stage
from spark_core.data.store import read_manifest, stage_complete, write_manifest


def finish(cfg: SparkConfig, run_dir: Path, k: int) -> dict:
    """Close iteration k: gather the stages' metrics into the `iteration` manifest, then remove
    the intermediate policy checkpoint and checkpoints beyond the retention rule."""
    run_dir = Path(run_dir)
    key = iteration_hash(cfg)
    doomed = retired_checkpoints(cfg, run_dir, k)
    if not stage_complete(run_dir, DONE, k, key):
        docs = {stage: read_manifest(run_dir, stage, k) for stage in STAGES}
        missing = [s for s, doc in docs.items() if doc is None and s not in ("evaluate", "warmup")]
        if missing:
            raise RuntimeError(f"iteration {k}: stage {missing[0]} has not completed")
        docs = {s: doc for s, doc in docs.items() if doc is not None}
        seconds = {s: doc["seconds"] for s, doc in docs.items()}
        metrics = {f"{METRIC_PREFIX[s]}{m}": v for s, doc in docs.items() for m, v in doc.get("metrics", {}).items()}
        # The checkpoint is not listed as an output: the retention rule removes old ones, and an
        # iteration stays complete after its checkpoint is gone.
        write_manifest(run_dir, DONE, k, key, outputs={}, inputs={"checkpoint": str(checkpoint_dir(run_dir, k))},
                       rows={s: sum(doc.get("rows", {}).values()) for s, doc in docs.items()},
                       seconds=sum(seconds.values()),
                       extra={"metrics": metrics, "stage_seconds": seconds, "disk": disk_use(run_dir, doomed),
                              "placement": placement(cfg, run_dir, k),
                              "checkpoints_kept": kept_checkpoints(run_dir, doomed)})
    fault("finish")
    for path in doomed:  # after the manifest: a killed close redoes this on re-run, never a stage
        shutil.rmtree(path, ignore_errors=True)
    return read_manifest(run_dir, DONE, k)


def placement(cfg: SparkConfig, run_dir: Path, k: int) -> dict:
    """Where iteration k ran: the runner, the shard count and, per sharded stage, its shards'
    host:pid and seconds (recorded in the `iteration` manifest)."""
    out: dict = {"runner": cfg.runner, "rollout_shards": cfg.rollout.shards, "train_processes": cfg.train.processes}
    if cfg.rollout.shards > 1:
        for phase in ("policy", "reward"):
            for stage, name in (("rollout", shard_stage), ("verify", verify_shard_stage)):
                docs = [read_manifest(run_dir, name(phase, i, cfg.rollout.shards), k) for i in range(cfg.rollout.shards)]
                out[f"{stage}_{phase}_shards"] = [{"host": d.get("host"), "pid": d.get("pid"), "seconds": d.get("seconds"),
                                                   "prompts": d.get("prompts")} for d in docs if d]
    return out
