"""One Prefect task per pipeline stage: thin wrappers around spark_core (no logic here).

Each stage skips itself when its manifest says it is complete, so Prefect retries and re-runs
are safe. Transient failures (a killed worker, an I/O hiccup, CUDA out of memory) are retried;
bad input (a wrong config, a missing model, a locked run) is not: retrying cannot fix it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

import spark_core.stages.evaluate  # noqa: F401 (the imports bind stages.<module>)
import spark_core.stages.finish
import spark_core.stages.recycle
import spark_core.stages.rollout
import spark_core.stages.train
import spark_core.stages.verify
import spark_core.stages.warmup  # noqa: F401 (binds stages.warmup)
from spark_core import stages, tracking
from spark_core.model.checkpoint import CheckpointError
from spark_core.config import SparkConfig
from spark_core.data.records import InputError
from spark_core.runlock import RunLocked
from spark_core.stages.problems import prepare_problems

PERMANENT = (InputError, CheckpointError, RunLocked, FileNotFoundError, ValueError)


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry unless the error is one a retry cannot fix."""
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:
        return True
    return False


_common = dict(cache_policy=NO_CACHE, retry_condition_fn=retry_transient, retry_delay_seconds=5)


@task(name="prepare", retries=1, **_common)
def prepare(cfg: SparkConfig, run_dir: Path) -> dict:
    return prepare_problems(cfg, run_dir)


@task(name="warmup", task_run_name="warmup-{k}", retries=1, **_common)
def warmup(cfg: SparkConfig, run_dir: Path, k: int) -> dict | None:
    return stages.warmup.warmup_stage(cfg, run_dir, k)


@task(name="rollout", task_run_name="rollout-{phase}-{k}", retries=1, **_common)
def rollout(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> dict:
    return stages.rollout.rollout(cfg, run_dir, k, phase)


@task(name="rollout-shard", task_run_name="rollout-{phase}-{k}-shard-{shard}", retries=1, **_common)
def rollout_shard(cfg: SparkConfig, run_dir: Path, k: int, phase: str, shard: int) -> dict:
    return stages.rollout.rollout_shard(cfg, run_dir, k, phase, shard)


@task(name="rollout-merge", task_run_name="rollout-{phase}-{k}-merge", retries=1, **_common)
def rollout_merge(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> dict:
    return stages.rollout.rollout_merge(cfg, run_dir, k, phase)


@task(name="verify", task_run_name="verify-{phase}-{k}", retries=1, **_common)
def verify(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> dict:
    return stages.verify.verify(cfg, run_dir, k, phase)


@task(name="verify-shard", task_run_name="verify-{phase}-{k}-shard-{shard}", retries=1, **_common)
def verify_shard(cfg: SparkConfig, run_dir: Path, k: int, phase: str, shard: int) -> dict:
    return stages.verify.verify_shard(cfg, run_dir, k, phase, shard)


@task(name="train", task_run_name="train-{phase}-{k}", retries=1, **_common)
def train(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> dict:
    return stages.train.train(cfg, run_dir, k, phase)


@task(name="recycle", task_run_name="recycle-{k}", retries=1, **_common)
def recycle(cfg: SparkConfig, run_dir: Path, k: int) -> dict:
    return stages.recycle.recycle_stage(cfg, run_dir, k)


@task(name="evaluate", task_run_name="evaluate-{k}", retries=1, **_common)
def evaluate(cfg: SparkConfig, run_dir: Path, k: int) -> dict | None:
    return stages.evaluate.evaluate_stage(cfg, run_dir, k)


@task(name="finish", task_run_name="finish-{k}", **_common)
def finish(cfg: SparkConfig, run_dir: Path, k: int) -> dict:
    return stages.finish.finish(cfg, run_dir, k)


@task(name="track", task_run_name="track-{k}", retries=2, **_common)
def track(cfg: SparkConfig, run_dir: Path, k: int, data_dir: Path) -> str:
    return tracking.track_iterations(cfg, run_dir, range(k + 1), data_dir)
