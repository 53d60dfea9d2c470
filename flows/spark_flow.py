"""The flow `spark`: SPARK iterations on one run directory, as a chain of Prefect tasks.

    prepare, then (iteration 0, when `warmup.enabled`) the format warm-up, then per iteration:
    rollout(policy) -> verify -> train(policy) -> recycle -> rollout(reward) -> verify
        -> train(reward) -> evaluate -> finish -> track (MLflow)

A flow run continues the run after its last completed iteration, so nightly runs extend one
co-evolution; stages already complete (a crashed or killed earlier flow run) are skipped.
Only one flow run works on a run directory at a time (a second one refuses).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger

from spark_core.config import load_config
from spark_core.iteration import claim_run, completed_iterations, resolve_path, summary_line
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
        last = {}
        for k in range(first, first + n):
            if k == 0 and cfg.warmup.enabled:
                stages.warmup(cfg, run_dir, k)
            for phase in ("policy", "reward"):
                if phase == "reward":
                    stages.recycle(cfg, run_dir, k)
                stages.rollout(cfg, run_dir, k, phase)
                stages.verify(cfg, run_dir, k, phase)
                stages.train(cfg, run_dir, k, phase)
            stages.evaluate(cfg, run_dir, k)
            last = stages.finish(cfg, run_dir, k)
            stages.track(cfg, run_dir, k, data)
            logger.info(summary_line(k, last["metrics"]))
    logger.info("run %s: %d iterations complete; tables under %s", run_dir.name, first + n, run_dir / "tables")
    logger.info("MLflow: %s", ui_command(data))
    return {"run_dir": str(run_dir), "iterations": first + n, "metrics": last.get("metrics", {})}


if __name__ == "__main__":
    import argparse

    from flows.local import api_or_ephemeral

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description="Run the `spark` flow once, in this process.")
    ap.add_argument("--run", default="tiny")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    with api_or_ephemeral():
        spark(run=a.run, config=a.config, iterations=a.iterations, data_dir=a.data_dir)
