"""Stage `verify_<phase>` (and its shards `verify_<phase>.shard-i-of-S`).

Reads: the side file of `rollout_<phase>`. Writes: the `rollouts` table part (phase) with
verdicts, rewards and group advantages (judge rewards: hard, expected, label-weighted); per shard
the verdicts file `<phase>.verdicts.shard-i-of-S.parquet`."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_core.maths import judge_reward
from spark_core.model.checkpoint import load_checkpoint
from spark_core.config import SparkConfig
from spark_core.periods import period_metrics, score, verdicts_of
from spark_core.model.rollout import Sample, pick_device
from spark_core.rundir import iteration_hash, phase_start_model, run_stage, samples_path
from spark_core.stages.rollout import shard_range
from spark_core.stages.samples import read_samples
from spark_core.data.store import atomic_write_parquet, read_manifest, stage_complete, staging_dir, write_table
from spark_core.maths.verdict_prob import right_verdict_probability
from spark_core.verify import Verdict


_VERDICT_SCHEMA = pa.schema([("correct", pa.bool_()), ("extracted", pa.string()), ("rule", pa.string()),
                             ("error", pa.string())])


def verdicts_path(run_dir: Path, k: int, phase: str, i: int, shards: int) -> Path:
    return samples_path(run_dir, k, phase).with_name(f"{phase}.verdicts.shard-{i}-of-{shards}.parquet")


def verify_shard_stage(phase: str, i: int, shards: int) -> str:
    return f"verify_{phase}.shard-{i}-of-{shards}"


def verify_shard(cfg: SparkConfig, run_dir: Path, k: int, phase: str, i: int) -> dict:
    """Stage `verify_<phase>.shard-i-of-S` (with `rollout.shards` S > 1): the verifier's verdicts
    on the samples of shard i's prompts (`shard_range` over the merged side file) into their own
    file, with their own manifest. The rewards and advantages need every group of the phase, so
    the `verify_<phase>` stage computes them from the shards' verdicts (equal to unsharded)."""
    run_dir, n = Path(run_dir), cfg.rollout.shards
    if not 0 <= i < n:
        raise ValueError(f"shard {i} does not exist: rollout.shards is {n}")

    def body() -> dict:
        source = samples_path(run_dir, k, phase)
        tasks, groups = read_samples(source)
        a, b = shard_range(len(tasks), n, i)
        verdicts = verdicts_of(tasks[a:b], groups[a:b])
        out = verdicts_path(run_dir, k, phase, i, n)
        table = pa.Table.from_pylist([dict(correct=v.correct, extracted=v.extracted, rule=v.rule, error=v.error)
                                      for v in verdicts], schema=_VERDICT_SCHEMA)
        atomic_write_parquet(table, out, staging_dir(run_dir))
        return dict(outputs={"verdicts": out}, rows={"verdicts": len(verdicts)}, inputs={"samples": str(source)},
                    shard=i, shards=n, prompts=[a, b], host=socket.gethostname(), pid=os.getpid())

    return run_stage(cfg, run_dir, verify_shard_stage(phase, i, n), k, iteration_hash(cfg), body)


def _shard_verdicts(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> list[Verdict]:
    """Every verify shard's verdicts in shard order (each shard must have completed)."""
    n, key = cfg.rollout.shards, iteration_hash(cfg)
    missing = [i for i in range(n) if not stage_complete(run_dir, verify_shard_stage(phase, i, n), k, key)]
    if missing:
        raise RuntimeError(f"iteration {k} verify_{phase}: shard {missing[0]} of {n} has not completed; "
                           f"run its stage first (the flow does)")
    rows = [r for i in range(n) for r in pq.read_table(verdicts_path(run_dir, k, phase, i, n)).to_pylist()]
    return [Verdict(r["correct"], r["extracted"], r["rule"], r["error"]) for r in rows]


def verify(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> dict:
    """Stage `verify_<phase>`: verify the samples, compute group advantages, write `rollouts`.

    With `rollout.shards` S > 1 the verdicts come from S verify shard stages (`verify_shard`;
    here, without a task runner, run one after another in this process first)."""
    run_dir = Path(run_dir)
    shards = cfg.rollout.shards
    if shards > 1 and not stage_complete(run_dir, f"verify_{phase}", k, iteration_hash(cfg)):
        for i in range(shards):
            verify_shard(cfg, run_dir, k, phase, i)

    def body() -> dict:
        tasks, groups = read_samples(samples_path(run_dir, k, phase))
        verdicts = _shard_verdicts(cfg, run_dir, k, phase) if shards > 1 else None
        rows, group_ids, unjudged = score(tasks, groups, phase, cfg.train.advantage, run=run_dir.name, verdicts=verdicts,
                                         format_penalty=cfg.spark.format_penalty)
        extra: dict = {}
        metrics: dict = {}
        if phase == "reward":
            var = judge_reward.group_reward_variance(rows, group_ids)
            if var is not None:
                metrics["judge_group_reward_variance"] = var
            if cfg.spark.judge_reward == "expected":
                metrics |= _expected_rewards(cfg, run_dir, k, groups, rows, group_ids)
            if cfg.spark.label_weighting == "inv_sqrt_ema":
                extra["label_ema"], weights, monitors = _label_weighting(cfg, run_dir, k, rows)
                metrics |= monitors | {f"label_ema_{a}": b for a, b in extra["label_ema"].items()} | {
                    f"label_weight_{a}": b for a, b in weights.items()}
        path = write_table(run_dir, "rollouts", rows, iteration=k, part=phase)
        metrics = period_metrics(rows, tasks, groups_of=group_ids) | {"unjudged": unjudged} | metrics
        return dict(outputs={"rollouts": path}, rows={"rollouts": len(rows)}, metrics=metrics, **extra)

    return run_stage(cfg, run_dir, f"verify_{phase}", k, iteration_hash(cfg), body)


def _expected_rewards(cfg: SparkConfig, run_dir: Path, k: int, groups: list[list[Sample]], rows: list[dict],
                      group_ids: list[int]) -> dict:
    """`judge_reward: expected`: P(right verdict | trace) of every judge row under the model that
    sampled it (the reward phase's start checkpoint), and the trace / verdict advantages from it,
    set in place; returns the monitors (spark_core/maths/judge_reward.py, "Expected rewards")."""
    samples = [s for g in groups for s in g]
    judged = [i for i, r in enumerate(rows) if r["kind"] in judge_reward.JUDGE_KINDS]
    if not judged:
        return {}
    model, tok = load_checkpoint(phase_start_model(cfg, run_dir, k, "reward"), pick_device(cfg.rollout.device))
    p, where = right_verdict_probability(
        model, tok, [samples[i].prompt_ids for i in judged], [samples[i].token_ids for i in judged],
        [rows[i]["label"] for i in judged], cfg.spark.reward_temperature, next(model.parameters()).device)
    del model
    hard = [rows[i]["reward"] for i in judged]
    gids = [group_ids[i] for i in judged]
    trace, verdict = judge_reward.expected_advantages(hard, p, gids, cfg.train.advantage)
    for n, i in enumerate(judged):
        rows[i] |= dict(expected_reward=p[n], verdict_index=where[n], advantage=trace[n],
                        verdict_advantage=verdict[n] if where[n] is not None else None)
    return {"judge_expected_reward_mean": sum(p) / len(p),
            "judge_group_expected_variance": judge_reward.mean_group_variance(p, gids),
            "judge_flat_groups_hard": judge_reward.flat_share(hard, gids),
            "judge_flat_groups_expected": judge_reward.flat_share(p, gids)}


def _label_weighting(cfg: SparkConfig, run_dir: Path, k: int, rows: list[dict]) -> tuple[dict, dict, dict]:
    """(moving-average label shares after iteration k, the label weights, monitors), weighting the
    judge rows' advantages in place. The average continues the one in iteration k-1's
    `verify_reward` manifest, so a resumed run carries the same state."""
    prev = read_manifest(run_dir, "verify_reward", k - 1) if k > 0 else None
    ema = judge_reward.update_ema((prev or {}).get("label_ema"),
                                  judge_reward.label_shares(r["label"] for r in rows if r["kind"] in ("pointwise", "pairwise")),
                                  cfg.spark.label_ema_decay)
    weights = judge_reward.label_weights(ema)
    monitors = judge_reward.weight_advantages(rows, weights)
    return ema, weights, monitors
