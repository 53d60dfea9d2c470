"""The flow `experiment`: SPARK against its GRPO ablations, every arm and seed a Prefect task run.

    python -m flows.experiment_flow --preset quick     # 1 seed, N=3: a first look (minutes)
    python -m flows.experiment_flow --preset full      # 3 seeds, N=10: docs/research/experiment.md's table

Arms and seeds run one after another (two torch processes would fight over the cores), each
resumable like the main flow: a re-run skips finished iterations and evaluations. Results:
results.parquet (one row per arm and seed), results.md, coevolution.png in the output folder
(default: the experiment's folder under DATA/experiments/), and nested MLflow runs (experiment
`spark-experiment`: one parent per experiment, one child per arm and seed).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from spark_core.config import SparkConfig, load_config
from spark_core.experiment import ARMS, DEFAULT_ARMS, arm_iterations, coevolution_plot, run_arm, write_results
from spark_core.rundir import resolve_path
from spark_core.tracking import (
    EXPERIMENT_ARMS, child_run, default_data_dir, experiment_parent, log_summary, track_iterations,
)
from tasks.stages import retry_transient

PRESETS = {
    "quick": {"iterations": 3, "seeds": [0], "eval": {"problems": 60, "judge_problems": 60, "samples": 0}},
    "full": {"iterations": 10, "seeds": [0, 1, 2], "eval": {}},
}


@task(name="arm", task_run_name="{arm}-seed{seed}", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=retry_transient)
def arm_task(cfg: SparkConfig, arm: str, seed: int, n: int, root: Path, data_dir: Path, parent: str) -> dict:
    row, run_dir, arm_cfg = run_arm(cfg, arm, seed, n, root)
    if arm == "base":
        log_summary(child_run(parent, run_dir, data_dir), row, data_dir)
    else:
        run_id = track_iterations(arm_cfg, run_dir, range(arm_iterations(arm, n)), data_dir,
                                  experiment=EXPERIMENT_ARMS, parent_run_id=parent)
        log_summary(run_id, {f"final/{k}": v for k, v in row.items()}, data_dir)
    return row


@flow(name="experiment", log_prints=True)
def experiment(name: str = "default", config: str = "configs/tiny.yaml", preset: str = "full",
               iterations: int | None = None, seeds: list[int] | None = None, arms: list[str] | None = None,
               out: str | None = None, data_dir: str | None = None) -> list[dict]:
    """Run every arm for every seed (same problems, data order and iterations) and write the results."""
    logger = get_run_logger()
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    n, seeds, arms = iterations or p["iterations"], seeds or p["seeds"], arms or list(DEFAULT_ARMS)
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; arms: {', '.join(ARMS)}")
    base = load_config(resolve_path(config))
    data = base.resolved()
    data["eval"] |= p["eval"]
    cfg = SparkConfig.model_validate(data)
    data_path = Path(data_dir).resolve() if data_dir else default_data_dir()
    root = data_path / "experiments" / name
    out_dir = Path(out).resolve() if out else root
    meta = {"name": name, "config": str(config), "preset": preset, "iterations": n, "seeds": seeds, "arms": arms}
    parent = experiment_parent(root, name, data_path, meta)
    rows = []
    for seed in seeds:
        for arm in arms:
            row = arm_task(cfg, arm, seed, n, root, data_path, parent)
            logger.info("%s seed %d: policy %s, judge %s, AUROC %s, with reflection %s (%.0fs)", arm, seed,
                        row["policy_accuracy"], row["judge_accuracy"], row["judge_auroc"], row["tts_accuracy"],
                        row["seconds"])
            rows.append(row)
    meta["seconds"] = sum(r["seconds"] for r in rows)
    files = write_results(rows, out_dir, meta)
    plot = coevolution_plot({a: [root / f"{a}-seed{s}" for s in seeds] for a in arms}, out_dir / "coevolution.png")
    log_summary(parent, {"seconds": meta["seconds"]}, data_path, [files["parquet"], files["markdown"], plot])
    logger.info("results: %s\n%s", out_dir, files["markdown"].read_text())
    return rows


if __name__ == "__main__":
    import argparse

    from flows.local import api_or_ephemeral

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description="Run the SPARK-versus-GRPO experiment.")
    ap.add_argument("--name", default=None, help="default: the preset's name")
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS))
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--arms", nargs="+", default=None, choices=ARMS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    with api_or_ephemeral():
        experiment(name=a.name or a.preset, config=a.config, preset=a.preset, iterations=a.iterations, seeds=a.seeds,
               arms=a.arms, out=a.out, data_dir=a.data_dir)
