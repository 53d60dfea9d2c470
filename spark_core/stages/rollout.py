"""Stage `rollout_<phase>` (and its shards `rollout_<phase>.shard-i-of-S` and their merge).

Reads: the `problems` table (policy) or the recycle stage's batch from `judge_data` (reward); the
phase's start checkpoint. Writes: the side file `samples/iteration=k/<phase>.parquet` (per shard:
`<phase>.shard-i-of-S.parquet`, merged in shard order)."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_core.config import SparkConfig
from spark_core.periods import Task, judge_tasks, solve_tasks
from spark_core.judge.recycle import consumed_batch
from spark_core.model.logprob_check import check_groups
from spark_core.model.rollout import Sample, SamplingSpec, pick_device, pick_dtype
from spark_core.rundir import (
    iteration_hash, open_engine, phase_start_model, policy_problems, problems_of, run_stage, samples_path,
)
from spark_core.stages.samples import write_samples
from spark_core.data.store import atomic_write_parquet, read_manifest, stage_complete, staging_dir


def _rollout_plan(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> tuple[list[Task], SamplingSpec]:
    """The prompts of stage `rollout_<phase>` and how they are sampled."""
    r = cfg.rollout
    if phase == "policy":
        problems = problems_of(run_dir, "train")
        if not problems:
            raise ValueError(f"{run_dir}: the problems table has no training problems; run `spark prepare` first")
        tasks = solve_tasks(policy_problems(cfg, problems, k), cfg.prompts.solve)
        return tasks, SamplingSpec(r.group_size, r.temperature, r.top_p, r.max_new_tokens, seed=cfg.seed * 1000 + 2 * k)
    tasks = judge_tasks(consumed_batch(run_dir, k))
    return tasks, SamplingSpec(r.group_size, cfg.spark.reward_temperature, r.top_p, r.judge_max_new_tokens,
                               seed=cfg.seed * 1000 + 2 * k + 1)


def _sample_into(cfg: SparkConfig, run_dir: Path, k: int, phase: str, tasks: list[Task], spec: SamplingSpec,
                 out: Path) -> dict:
    """Sample `tasks` from the phase's start checkpoint into the side file `out`; the manifest's fields."""
    source = phase_start_model(cfg, run_dir, k, phase)
    groups: list[list[Sample]] = []
    start = time.monotonic()
    if tasks:
        with open_engine(cfg, source, spec.seed) as engine:
            groups = engine.generate([t.prompt for t in tasks], spec)
    seconds = time.monotonic() - start
    extra = {}
    if groups and checks_logprobs(cfg):
        t0 = time.monotonic()
        groups, check = check_groups(source, groups, spec.temperature, cfg.train.bf16_autocast,
                                     cfg.rollout.logprob_tolerance)
        extra["logprob_check"] = check | {"seconds": time.monotonic() - t0}
    tokens = sum(len(s.token_ids) for g in groups for s in g)
    write_samples(run_dir, out, tasks, groups)
    return dict(outputs={"samples": out}, rows={"samples": sum(map(len, groups)), "tokens": tokens},
                inputs={"checkpoint": str(source)}, sampling_seconds=seconds, engine=cfg.rollout.engine,
                sampling_dtype=str(pick_dtype(cfg.rollout.dtype, pick_device(cfg.rollout.device))).removeprefix("torch."),
                metrics={"rollout_tokens_per_s": tokens / seconds if seconds > 0 else 0.0}, **extra)


def checks_logprobs(cfg: SparkConfig) -> bool:
    """Whether training rollouts recompute their log-probs (`rollout.logprob_check`; `auto`: engines other than hf)."""
    mode = cfg.rollout.logprob_check
    return mode == "always" or (mode == "auto" and cfg.rollout.engine != "hf")


def rollout(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> dict:
    """Stage `rollout_<phase>`: sample G responses per prompt from the phase's start checkpoint.

    policy: B training problems drawn by (seed, k); reward: the judge/reflection rows the
    recycle stage took from the cache for iteration k. With `rollout.shards` S > 1 the stage
    is S shard stages and a merge (`rollout_shard`, `rollout_merge`); here, without a task
    runner, the shards run one after another in this process.
    """
    run_dir = Path(run_dir)
    if cfg.rollout.shards > 1:
        for i in range(cfg.rollout.shards):
            rollout_shard(cfg, run_dir, k, phase, i)
        return rollout_merge(cfg, run_dir, k, phase)

    def body() -> dict:
        tasks, spec = _rollout_plan(cfg, run_dir, k, phase)
        return _sample_into(cfg, run_dir, k, phase, tasks, spec, samples_path(run_dir, k, phase))

    return run_stage(cfg, run_dir, f"rollout_{phase}", k, iteration_hash(cfg), body)


def shard_range(n: int, shards: int, i: int) -> tuple[int, int]:
    """[start, end) of shard i of `shards` over n prompts: contiguous, sizes differing by at most 1,
    together every prompt exactly once."""
    return i * n // shards, (i + 1) * n // shards


def shard_seed(cfg: SparkConfig, k: int, phase: str, i: int) -> int:
    """The sampling seed of shard i: a hash of (seed, iteration, phase, shard, shard count)."""
    key = f"{cfg.seed}|{k}|{phase}|{i}|{cfg.rollout.shards}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


def shard_stage(phase: str, i: int, shards: int) -> str:
    return f"rollout_{phase}.shard-{i}-of-{shards}"


def shard_samples_path(run_dir: Path, k: int, phase: str, i: int, shards: int) -> Path:
    return samples_path(run_dir, k, phase).with_name(f"{phase}.shard-{i}-of-{shards}.parquet")


def rollout_shard(cfg: SparkConfig, run_dir: Path, k: int, phase: str, i: int) -> dict:
    """Stage `rollout_<phase>.shard-i-of-S`: shard i's prompts (`shard_range`) sampled with its own
    seed (`shard_seed`) into its own side file, with its own manifest, so a killed shard is redone
    alone. Runs anywhere the run directory is readable and writable (a Ray worker included)."""
    run_dir, n = Path(run_dir), cfg.rollout.shards
    if not 0 <= i < n:
        raise ValueError(f"shard {i} does not exist: rollout.shards is {n}")

    def body() -> dict:
        tasks, spec = _rollout_plan(cfg, run_dir, k, phase)
        a, b = shard_range(len(tasks), n, i)
        spec = replace(spec, seed=shard_seed(cfg, k, phase, i))
        doc = _sample_into(cfg, run_dir, k, phase, tasks[a:b], spec, shard_samples_path(run_dir, k, phase, i, n))
        return doc | {"shard": i, "shards": n, "prompts": [a, b], "host": socket.gethostname(), "pid": os.getpid()}

    return run_stage(cfg, run_dir, shard_stage(phase, i, n), k, iteration_hash(cfg), body)


def rollout_merge(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> dict:
    """Stage `rollout_<phase>` of a sharded run: once every shard's part is there, their samples
    in shard order become the stage's side file (what verify and train read, as unsharded)."""
    run_dir, n, key = Path(run_dir), cfg.rollout.shards, iteration_hash(cfg)

    def body() -> dict:
        missing = [i for i in range(n) if not stage_complete(run_dir, shard_stage(phase, i, n), k, key)]
        if missing:
            raise RuntimeError(f"iteration {k} rollout_{phase}: shard {missing[0]} of {n} has not completed; "
                               f"run its stage first (the flow does)")
        docs = [read_manifest(run_dir, shard_stage(phase, i, n), k) for i in range(n)]
        parts = [shard_samples_path(run_dir, k, phase, i, n) for i in range(n)]
        out = samples_path(run_dir, k, phase)
        atomic_write_parquet(pa.concat_tables([pq.read_table(p) for p in parts]), out, staging_dir(run_dir))
        tokens = sum(d["rows"]["tokens"] for d in docs)
        wall = max(d.get("sampling_seconds", 0.0) for d in docs)  # shards run side by side
        return dict(outputs={"samples": out}, rows={"samples": sum(d["rows"]["samples"] for d in docs), "tokens": tokens},
                    inputs={"shards": [str(p) for p in parts], "checkpoint": docs[0]["inputs"]["checkpoint"]},
                    shards=n,
                    metrics={"rollout_tokens_per_s": tokens / wall if wall > 0 else 0.0, "rollout_shards": n})

    return run_stage(cfg, run_dir, f"rollout_{phase}", k, key, body)
