"""The flow `spark`: SPARK iterations on one run directory, as a chain of Prefect tasks.

    prepare, then (iteration 0, when `warmup.enabled`) the format warm-up, then per iteration:
    rollout(policy) -> verify -> train(policy) -> recycle -> rollout(reward) -> verify
        -> train(reward) -> evaluate -> finish -> track (MLflow)

A flow run continues the run after its last completed iteration, so nightly runs extend one
co-evolution; stages already complete (a crashed or killed earlier flow run) are skipped.
Only one flow run works on a run directory at a time (a second one waits for the lock).
With `rollout.shards` > 1 each rollout stage is one task run per shard and a merge, and each
verify stage one task run per shard's verdicts and the scoring; with
`runner: ray` the iterations run in a subflow whose task runner is a Ray cluster (prefect-ray),
so the shards run side by side on its workers (see flows/runners.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger

from spark_core.config import load_config
from spark_core.iteration import summary_line
from spark_core.rundir import CHAIN, claim_run, completed_iterations, resolve_path, stage_name
from spark_core.runlock import run_lock
from spark_core.tracking import default_data_dir, ui_command
from tasks import stages

DEFAULT_CONFIG = "configs/tiny.yaml"


def resolve_run(run: str, data_dir: Path) -> Path:
    """A bare name is a folder under DATA/runs; anything with a slash is a path."""
    return Path(run).resolve() if "/" in run or run.startswith(".") else data_dir / "runs" / run


@flow(name="spark", log_prints=True)
def spark(run: str = "tiny", config: str = DEFAULT_CONFIG, iterations: int | None = None,
          data_dir: str | None = None, lock_wait_s: float = 6 * 3600) -> dict:
    """Run `iterations` more SPARK iterations (default: the config's `iterations`) on run `run`.

    run: a run name (a folder under DATA/runs) or a directory path.
    config: a YAML config (relative paths: from the repository root).
    data_dir: where runs and the MLflow store live (default: SPARK_DATA_DIR or the repo's data/).
    lock_wait_s: how long to wait for another process (a flow run, `spark iterate`) working on
        the same run to finish before failing: flow runs queued on one run take turns.
    """
    logger = get_run_logger()
    data = Path(data_dir).resolve() if data_dir else default_data_dir()
    run_dir = resolve_run(run, data)
    cfg = load_config(resolve_path(config))
    n = iterations or cfg.iterations
    with run_lock(run_dir, lock_wait_s):
        claim_run(cfg, run_dir)
        stages.prepare(cfg, run_dir)
        first = completed_iterations(run_dir, cfg)
        if cfg.runner == "ray":  # the iterations in a subflow whose task runner is the Ray cluster
            from flows.runners import ray_task_runner, workers_api

            with workers_api(cfg) as env:  # the workers report to this flow's API, not to servers of their own
                last = iterations_on_ray.with_options(task_runner=ray_task_runner(cfg, env))(cfg, run_dir, first, n,
                                                                                            data)
        else:
            last = iterate(cfg, run_dir, first, n, data)
    logger.info("run %s: %d iterations complete; tables under %s", run_dir.name, first + n, run_dir / "tables")
    logger.info("MLflow: %s", ui_command(data))
    return {"run_dir": str(run_dir), "iterations": first + n, "metrics": last.get("metrics", {})}


def iterate(cfg, run_dir: Path, first: int, n: int, data: Path) -> dict:
    """Iterations first .. first+n-1, stage by stage (the chain of spark_core/rundir.py, each step
    a task; rollout and verify as their shards when sharded); returns the last `iteration` manifest."""
    logger = get_run_logger()
    last: dict = {}
    steps = {"warmup": lambda k, _: stages.warmup(cfg, run_dir, k), "rollout": lambda k, p: rollout(cfg, run_dir, k, p),
             "verify": lambda k, p: verify(cfg, run_dir, k, p), "train": lambda k, p: stages.train(cfg, run_dir, k, p),
             "recycle": lambda k, _: stages.recycle(cfg, run_dir, k),
             "evaluate": lambda k, _: stages.evaluate(cfg, run_dir, k)}
    for k in range(first, first + n):
        for step, phase in CHAIN:
            if step == "warmup" and not (k == 0 and cfg.warmup.enabled):
                continue  # no task run for a stage that does not apply
            steps[step](k, phase)
        last = stages.finish(cfg, run_dir, k)
        stages.track(cfg, run_dir, k, data)
        logger.info(summary_line(k, last["metrics"]))
    return last


@flow(name="spark-iterations-on-ray", log_prints=True)
def iterations_on_ray(cfg, run_dir: Path, first: int, n: int, data: Path) -> dict:
    """`iterate` with this subflow's task runner (set by the caller) taking the rollout shards."""
    return iterate(cfg, run_dir, first, n, data)


def rollout(cfg, run_dir: Path, k: int, phase: str) -> None:
    """Stage rollout_<phase>: one task, or `rollout.shards` shard tasks and a merge. On Ray the
    shards are submitted together (one Ray task each, with the CPUs and GPUs of `ray`); a
    shard that fails is retried alone, and the merge waits for every shard's part."""
    if cfg.rollout.shards == 1:
        stages.rollout(cfg, run_dir, k, phase)
        return
    run_shards(cfg, "rollout", stages.rollout_shard, run_dir, k, phase)
    stages.rollout_merge(cfg, run_dir, k, phase)


def verify(cfg, run_dir: Path, k: int, phase: str) -> None:
    """Stage verify_<phase>: with `rollout.shards` > 1 the verdicts of each shard's samples are
    shard tasks first (on Ray side by side, CPUs only), then the stage scores them together."""
    if cfg.rollout.shards > 1:
        run_shards(cfg, "verify", stages.verify_shard, run_dir, k, phase, gpus=False)
    stages.verify(cfg, run_dir, k, phase)


def run_shards(cfg, step: str, shard_task, run_dir: Path, k: int, phase: str, gpus: bool = True) -> None:
    """Every shard of a stage: on Ray submitted together (the CPUs and, for sampling, GPUs of
    `ray` per shard), raising the first failure; locally one after another in this process
    (two models in one process buy nothing here)."""
    shards = cfg.rollout.shards
    if cfg.runner == "ray":
        from prefect_ray.context import remote_options

        from flows.runners import ShardFailed, shard_error

        gpu = (cfg.ray.gpus_per_shard or None) if gpus else None
        with remote_options(num_cpus=cfg.ray.cpus_per_shard, num_gpus=gpu, max_retries=cfg.ray.worker_retries):
            futures = [shard_task.submit(cfg, run_dir, k, phase, i) for i in range(shards)]
        failed = None
        for i, f in enumerate(futures):  # wait for all: the shards that succeed keep their parts
            try:
                f.result()
            except Exception as e:  # a task's own error, or Ray's when the worker died
                failed = failed or (i, e)
        if failed:
            i, e = failed
            where = f"{stage_name(step, phase)} (iteration {k})"
            raise ShardFailed(shard_error(where, i, shards, e)) from e
    else:
        for i in range(shards):
            shard_task(cfg, run_dir, k, phase, i)


if __name__ == "__main__":
    import argparse
    import sys

    from flows.local import api_or_ephemeral

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description="Run the `spark` flow once, in this process.")
    ap.add_argument("--run", default="tiny")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    from flows.runners import ShardFailed
    from spark_core.model.checkpoint import CheckpointError
    from spark_core.runlock import RunLocked

    try:
        with api_or_ephemeral():
            spark(run=a.run, config=a.config, iterations=a.iterations, data_dir=a.data_dir)
    except (ShardFailed, CheckpointError, RunLocked, ValueError) as e:  # one line, as the CLI's errors
        sys.exit(f"error: {e}")
