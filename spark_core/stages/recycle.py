"""Stage `recycle`: the verified policy rollouts become judge and reflection rows.

Reads: the policy side file and `rollouts` part. Writes: the iteration's rows of the FIFO cache
`judge_data` and takes the reward period's batch from it (read back by `rollout_reward`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from spark_core.config import SparkConfig
from spark_core.periods import groups_for_recycling, score
from spark_core.judge.recycle import recycle, take_from_cache, write_cache
from spark_core.model.rollout import SamplingSpec
from spark_core.rundir import iteration_hash, open_engine, run_stage, samples_path, start_model
from spark_core.stages.samples import read_samples
from spark_core.data.store import part_path


def recycle_stage(cfg: SparkConfig, run_dir: Path, k: int) -> dict:
    """Stage `recycle`: turn the verified policy rollouts into judge and reflection rows, add them
    to the FIFO cache in `judge_data`, and take the reward period's batch from it."""
    run_dir = Path(run_dir)

    def body() -> dict:
        tasks, groups = read_samples(samples_path(run_dir, k, "policy"))
        rows = pq.read_table(part_path(run_dir, "rollouts", k, "policy")).to_pylist()
        sp = cfg.spark
        if sp.mode in ("reward_only", "static_mix"):
            # Judge data from the frozen base model's answers to the same problems.
            r = cfg.rollout
            spec = SamplingSpec(r.group_size, r.temperature, r.top_p, r.max_new_tokens, seed=cfg.seed * 1000 + 2 * k + 7)
            with open_engine(cfg, start_model(cfg, run_dir), spec.seed) as engine:
                groups = engine.generate([t.prompt for t in tasks], spec)
            rows = score(tasks, groups, "base", cfg.train.advantage)[0]
        source = [] if sp.mode == "policy_only" else groups_for_recycling(rows, tasks)
        made = recycle(source, cfg.seed, sp.template_set, sp.judge_input,
                       sp.mixed_pointwise, salt=f"iteration={k}", balance_labels=sp.balance_labels)
        path = write_cache(run_dir, k, made.rows)
        batch = take_from_cache(run_dir, k, cfg.rollout.batch_prompts, sp.balance_labels)
        metrics = {f"made_{a}": b for a, b in made.made.items()} | {f"dropped/{a}": b for a, b in made.dropped.items()}
        for kind in ("pointwise", "pairwise", "reflection"):
            metrics[f"consumed_{kind}"] = sum(r.kind == kind for r in batch)
        return dict(outputs={"judge_data": path}, rows={"made": len(made.rows), "consumed": len(batch)}, metrics=metrics)

    return run_stage(cfg, run_dir, "recycle", k, iteration_hash(cfg), body)
