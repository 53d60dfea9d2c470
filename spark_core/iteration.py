"""One SPARK iteration as a chain of restartable stages (../shared/DESIGN.md):

    rollout_policy -> verify_policy -> train_policy -> recycle
        -> rollout_reward -> verify_reward -> train_reward -> evaluate

Every stage is a function of (config, run directory, iteration k). It reads what earlier
stages wrote, writes its own files atomically, then its manifest; a stage whose manifest
matches the config is skipped. What flows between stages:

- `RUN/samples/iteration=k/<phase>.parquet` (side file, not a DuckDB table): the sampled
  tokens and their log-probabilities under the sampler, which the train stage needs and the
  `rollouts` table has no room for; written by rollout, read by verify and train.
- `rollouts` (part = phase): verified rows with reward and advantage, written by verify.
- `RUN/checkpoints/iteration=k.policy/`: the policy after the policy period (Hugging Face
  directory plus optimizer/scheduler state); the reward rollout and the reward period start
  from it. Removed once the iteration is complete.
- `RUN/checkpoints/iteration=k/`: the model after the reward period; the next iteration
  starts from it. The last `checkpoints.keep_last` are kept, and every `checkpoints.keep_every`-th.
- `judge_data` (the FIFO cache), `updates` (part = phase), `evals`.

Killed at any point, a re-run redoes only the unfinished stage from its inputs: table parts
are replaced (never appended), checkpoint directories appear complete or not at all
(written beside, then renamed), and the cache selects the same rows. Each stage seeds its
own randomness from (seed, k), so a resumed run writes the same tables as an unbroken one.
The Prefect tasks in tasks/ call these functions one to one; nothing here imports Prefect.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from spark_core.checkpoint import CheckpointError, check_model_dir, load_checkpoint, save_checkpoint
from spark_core.config import SparkConfig, config_hash, stable_resolved
from spark_core.evaluate import (
    JudgeItem, build_judge_set, policy_metrics, rows_for_evals, run_judge_set, sample_groups, tts_best_of_n, tts_reflect,
)
from spark_core.periods import (
    Task, groups_for_recycling, judge_tasks, period_metrics, score, solve_tasks, training_batch, verdicts_of,
)
from spark_core.problems import Problem
from spark_core.recycle import consumed_batch, recycle, take_from_cache, write_cache
from spark_core.records import InputError
from spark_core import judge_reward, lora, progress, shared_warmup, warmup
from spark_core.runlock import file_lock
from spark_core.rollout import Sample, SamplingSpec, encode_prompts, make_engine, pick_device, pick_dtype
from spark_core.store import (
    atomic_write_bytes, atomic_write_parquet, checkpoint_problem, clean_staging, manifest_path, part_path, read_manifest,
    read_table, stage_complete,
    staging_dir, write_error, write_manifest, write_table,
)
from spark_core.trainer import TRAINER_STATE, Trainer, TrainSettings, settings_from_config
from spark_core.verdict_prob import right_verdict_probability
from spark_core.timing import timed
from spark_core.verify import Verdict

log = logging.getLogger(__name__)

STAGES = ("warmup", "rollout_policy", "verify_policy", "train_policy", "recycle",
          "rollout_reward", "verify_reward", "train_reward", "evaluate")
DONE = "iteration"  # the manifest that closes an iteration
#: How each stage's metrics are named in the `iteration` manifest and in MLflow.
METRIC_PREFIX = {"warmup": "warmup/", "rollout_policy": "policy/", "verify_policy": "policy/", "train_policy": "policy/train_",
                 "recycle": "recycle/", "rollout_reward": "reward/", "verify_reward": "reward/",
                 "train_reward": "reward/train_", "evaluate": "eval/"}
#: Test hook: a stage named here kills its own process (SIGKILL) after writing its outputs and
#: before its manifest, the worst moment to die. Used by the restart tests; never set it otherwise.
FAULT_ENV = "SPARK_FAULT_STAGE"


# --------------------------------------------------------------------------- paths and keys


def checkpoint_dir(run_dir: Path, iteration: int, phase: str = "reward") -> Path:
    """Where iteration k's checkpoint lives: after the reward period (the iteration's result),
    or after its policy period (`phase="policy"`, intermediate)."""
    name = f"iteration={iteration}" + ("" if phase == "reward" else f".{phase}")
    return Path(run_dir) / "checkpoints" / name


def samples_path(run_dir: Path, iteration: int, phase: str) -> Path:
    return Path(run_dir) / "samples" / f"iteration={iteration}" / f"{phase}.parquet"


def iteration_hash(cfg: SparkConfig) -> str:
    """What the training stages depend on: the config less the bootstrap recipe, the evaluation
    settings, the number of iterations per flow run, checkpoint retention, where shards run
    (`runner`, `ray`) and `train.packing` (changing those must not redo training; the shard
    count stays in: it decides the sampling seeds)."""
    data = stable_resolved(cfg)
    for key in ("bootstrap", "eval", "iterations", "checkpoints", "runner", "ray"):
        data.pop(key, None)
    # Packing lays out the same sequences differently (the loss is equal up to rounding): a
    # run may switch it on or off, and runs made before the option existed keep their hash.
    data["train"].pop("packing")
    data["train"].pop("processes", None)  # placement: the update is the same (up to rounding, tested)
    data["train"].pop("fsdp", None)
    return config_hash(data)


def eval_hash(cfg: SparkConfig) -> str:
    return config_hash([iteration_hash(cfg), cfg.eval.model_dump(mode="json")])


def resolve_path(path: str | Path) -> Path:
    """A relative path (model, config) is taken from the working directory, else from the repository root."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return Path(__file__).resolve().parents[1] / path


def base_model(cfg: SparkConfig) -> Path:
    return resolve_path(cfg.model.path)


def completed_iterations(run_dir: Path, cfg: SparkConfig) -> int:
    """How many iterations, from 0, are complete for this config."""
    k = 0
    while stage_complete(run_dir, DONE, k, iteration_hash(cfg)):
        k += 1
    return k


def problems_of(run_dir: Path, split: str) -> list[Problem]:
    """The run's `problems` table rows of one split (`train` | `held_out`) as Problems."""
    return [Problem(p["id"], p["question"], p["answer"], p["solution"], p["source"])
            for p in read_table(run_dir, "problems").to_pylist() if p["split"] == split]


def policy_problems(cfg: SparkConfig, train: list[Problem], k: int) -> list[Problem]:
    """The B training problems of iteration k's policy period: a draw seeded by (seed, k), so every
    arm of an experiment (and a resumed run) sees the same problems in the same order."""
    return random.Random(f"{cfg.seed}|iteration|{k}").sample(train, min(cfg.rollout.batch_prompts, len(train)))


@contextmanager
def open_engine(cfg: SparkConfig, checkpoint: Path, seed: int) -> Iterator:
    """The configured rollout engine on a checkpoint, closed (GPU memory freed) on the way out."""
    r = cfg.rollout
    engine = make_engine(r.engine, checkpoint, device=r.device, dtype=r.dtype, seed=seed, system=cfg.prompts.system)
    try:
        yield engine
    finally:
        engine.close()


def warmup_dir(run_dir: Path) -> Path:
    """Where a run made before warm-ups were shared keeps its format warm-up checkpoint (newer runs
    name the shared one in their warmup manifest; `start_model` finds either)."""
    return Path(run_dir) / "checkpoints" / "warmup"


def start_model(cfg: SparkConfig, run_dir: Path) -> Path:
    """The model RL starts from and is anchored to (KL reference, judge-set and ablation rollouts):
    the warm-up checkpoint when the warm-up is on, else the configured base model."""
    if cfg.warmup.enabled:
        doc = read_manifest(run_dir, "warmup", 0)
        # The shared warm-up the manifest names; a run made before warm-ups were shared has its own.
        path = Path(doc["shared"]) if doc and doc.get("shared") else warmup_dir(run_dir)
        if doc is None or not path.is_dir():
            raise FileNotFoundError(f"{path}: the warm-up checkpoint is missing; the warmup stage must run first "
                                    f"(delete {Path(run_dir) / 'manifests'} for iteration 0 to redo it)")
        return path
    return check_model_dir(base_model(cfg))  # one-line CheckpointError when it is missing


def _start_model(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> Path:
    """The checkpoint a phase of iteration k starts from."""
    if phase == "reward":
        path = checkpoint_dir(run_dir, k, "policy")
    elif k == 0:
        return start_model(cfg, run_dir)
    else:
        path = checkpoint_dir(run_dir, k - 1)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint missing; the stage that writes it must run first "
                                f"(delete {Path(run_dir) / 'manifests'} for iteration {k} to redo it)")
    problem = checkpoint_problem(path)
    if problem is not None:  # damaged after its iteration closed: nothing left here can rebuild it
        raise CheckpointError(f"{path}: {problem}; iteration {k} starts from it and the iteration that wrote it "
                              f"is closed: restore the folder, or start a new run from an intact checkpoint")
    return path


def _fault(stage: str) -> None:
    if os.environ.get(FAULT_ENV) == stage:
        log.warning("%s=%s: killing this process inside the stage", FAULT_ENV, stage)
        os.kill(os.getpid(), signal.SIGKILL)


def _run_stage(cfg: SparkConfig, run_dir: Path, stage: str, k: int, key: str, body: Callable[[], dict]) -> dict:
    """Skip a complete stage; otherwise run `body` (which writes its outputs and returns the
    manifest's fields), hit the fault hook, write the manifest."""
    run_dir = Path(run_dir)
    if stage_complete(run_dir, stage, k, key):
        progress.log.info("iteration %d %s: complete, skipped", k, stage)
        return read_manifest(run_dir, stage, k)
    start = time.monotonic()
    with progress.stage(f"iteration {k} {stage}"):
        doc = timed("stage")(body)()
    _fault(stage)
    write_manifest(run_dir, stage, k, key, outputs=doc.pop("outputs", {}), rows=doc.pop("rows", {}),
                   inputs=doc.pop("inputs", {}), seconds=time.monotonic() - start, extra=doc)
    return read_manifest(run_dir, stage, k)


# --------------------------------------------------------------------------- the side file


_SAMPLE_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("kind", pa.string()), ("prompt", pa.string()), ("label", pa.string()),
    ("question", pa.string()), ("sample_index", pa.int32()), ("text", pa.string()),
    ("prompt_ids", pa.list_(pa.int32())), ("token_ids", pa.list_(pa.int32())),
    ("logprobs", pa.list_(pa.float64())), ("finish_reason", pa.string()), ("prompt_tokens", pa.int32()),
])


@timed("parquet")
def write_samples(run_dir: Path, path: Path, tasks: list[Task], groups: list[list[Sample]]) -> None:
    rows = [dict(prompt_id=t.prompt_id, kind=t.kind, prompt=t.prompt, label=t.label, question=t.question,
                 sample_index=s.sample_index, text=s.text, prompt_ids=s.prompt_ids, token_ids=s.token_ids,
                 logprobs=s.logprobs, finish_reason=s.finish_reason, prompt_tokens=s.prompt_tokens)
            for t, g in zip(tasks, groups) for s in g]
    atomic_write_parquet(pa.Table.from_pylist(rows, schema=_SAMPLE_SCHEMA), path, staging_dir(run_dir))


@timed("parquet")
def read_samples(path: Path) -> tuple[list[Task], list[list[Sample]]]:
    """Tasks and their groups of samples, in the order they were sampled."""
    tasks: list[Task] = []
    groups: list[list[Sample]] = []
    for r in pq.read_table(path).to_pylist():
        if not tasks or tasks[-1].prompt_id != r["prompt_id"]:
            tasks.append(Task(r["prompt_id"], r["kind"], r["prompt"], r["label"], r["question"]))
            groups.append([])
        groups[-1].append(Sample(len(tasks) - 1, r["sample_index"], r["text"], r["token_ids"], r["logprobs"],
                                 r["finish_reason"], r["prompt_tokens"], r["prompt_ids"]))
    return tasks, groups


# --------------------------------------------------------------------------- the stages


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
    source = _start_model(cfg, run_dir, k, phase)
    groups: list[list[Sample]] = []
    start = time.monotonic()
    if tasks:
        with open_engine(cfg, source, spec.seed) as engine:
            groups = engine.generate([t.prompt for t in tasks], spec)
    seconds = time.monotonic() - start
    tokens = sum(len(s.token_ids) for g in groups for s in g)
    write_samples(run_dir, out, tasks, groups)
    return dict(outputs={"samples": out}, rows={"samples": sum(map(len, groups)), "tokens": tokens},
                inputs={"checkpoint": str(source)}, sampling_seconds=seconds,
                sampling_dtype=str(pick_dtype(cfg.rollout.dtype, pick_device(cfg.rollout.device))).removeprefix("torch."),
                metrics={"rollout_tokens_per_s": tokens / seconds if seconds > 0 else 0.0})


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

    return _run_stage(cfg, run_dir, f"rollout_{phase}", k, iteration_hash(cfg), body)


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

    return _run_stage(cfg, run_dir, shard_stage(phase, i, n), k, iteration_hash(cfg), body)


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

    return _run_stage(cfg, run_dir, f"rollout_{phase}", k, key, body)


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

    return _run_stage(cfg, run_dir, verify_shard_stage(phase, i, n), k, iteration_hash(cfg), body)


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

    return _run_stage(cfg, run_dir, f"verify_{phase}", k, iteration_hash(cfg), body)


def _expected_rewards(cfg: SparkConfig, run_dir: Path, k: int, groups: list[list[Sample]], rows: list[dict],
                      group_ids: list[int]) -> dict:
    """`judge_reward: expected`: P(right verdict | trace) of every judge row under the model that
    sampled it (the reward phase's start checkpoint), and the trace / verdict advantages from it,
    set in place; returns the monitors (spark_core/judge_reward.py, "Expected rewards")."""
    samples = [s for g in groups for s in g]
    judged = [i for i, r in enumerate(rows) if r["kind"] in judge_reward.JUDGE_KINDS]
    if not judged:
        return {}
    model, tok = load_checkpoint(_start_model(cfg, run_dir, k, "reward"), pick_device(cfg.rollout.device))
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


def _replace_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Write a directory beside `out`, then put it in place: a kill leaves the old one or none."""
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except OSError as e:  # a full disk: the partial copy goes, the old directory stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(out, e) from e
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _period_batch(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> tuple[list, float, dict]:
    """What the `train_<phase>` stage trains on: (sequences, learning-rate scale, loss overrides),
    after the ablation modes (`spark.mode`) have taken their share."""
    _, groups = read_samples(samples_path(run_dir, k, phase))
    rows = pq.read_table(part_path(run_dir, "rollouts", k, phase)).to_pylist()
    batch = training_batch(groups, rows)
    sp, mode = cfg.spark, cfg.spark.mode
    overrides, lr_scale = {}, 1.0
    if phase == "reward":
        overrides = {"entropy_coef": sp.reward_entropy_coef, "temperature": sp.reward_temperature}
        if sp.reward_clip_high is not None:
            overrides["clip_high"] = sp.reward_clip_high
        lr_scale = sp.reward_lr_scale
    if phase == "policy" and mode in ("reward_only", "static_mix"):
        batch = []  # no policy period of its own (static_mix trains these with the reward data)
    if phase == "reward" and mode == "static_mix":
        # One period on the policy rollouts and the judge rollouts together, at the policy's
        # settings: the static mix of the ablation.
        _, pgroups = read_samples(samples_path(run_dir, k, "policy"))
        prows = pq.read_table(part_path(run_dir, "rollouts", k, "policy")).to_pylist()
        batch = training_batch(pgroups, prows) + batch
        overrides, lr_scale = {}, 1.0
    return batch, lr_scale, overrides


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if not r["skipped"]]
    return sum(vals) / len(vals) if vals else None


def train(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> dict:
    """Stage `train_<phase>`: one GRPO update period on the verified samples; saves the checkpoint
    (weights plus optimizer and scheduler state, so the next stage continues exactly)."""
    run_dir = Path(run_dir)

    def body() -> dict:
        source = _start_model(cfg, run_dir, k, phase)
        batch, lr_scale, overrides = _period_batch(cfg, run_dir, k, phase)
        out = checkpoint_dir(run_dir, k, phase)
        extra: dict = {}
        if not batch and (source / TRAINER_STATE).is_file():
            # Nothing to train on (the reward phase of policy_only, an empty cache): the weights and
            # optimizer state pass on unchanged, so copy them instead of loading and saving a model.
            updates: list[dict] = []
            _replace_dir(out, lambda tmp: shutil.copytree(source, tmp))
        elif cfg.train.processes > 1:
            updates, held = train_under_torchrun(cfg, run_dir, k, phase)
            extra["processes"] = {"count": cfg.train.processes, "fsdp": cfg.train.fsdp, "parameters_held": held}
        else:
            updates = train_period(cfg, run_dir, k, phase, (batch, lr_scale, overrides))
        table = write_table(run_dir, "updates", updates, iteration=k, part=phase)
        metrics = {m: _mean(updates, m) for m in ("loss", "kl", "entropy", "clip_frac_low", "clip_frac_high", "grad_norm")}
        metrics["steps"] = len(updates)
        metrics["skipped_steps"] = sum(u["skipped"] for u in updates)
        secs = sum(u["seconds"] for u in updates)
        metrics["tokens_per_s"] = sum(u["tokens"] for u in updates) / secs if secs > 0 else 0.0
        # The checkpoint is recorded as an input of later stages, not an output of this one: the
        # intermediate policy checkpoint is removed once the iteration completes.
        return dict(outputs={"updates": table}, rows={"updates": len(updates), "sequences": len(batch)},
                    inputs={"checkpoint": str(source)}, checkpoint=str(out),
                    metrics={m: v for m, v in metrics.items() if v is not None}, **extra)

    return _run_stage(cfg, run_dir, f"train_{phase}", k, iteration_hash(cfg), body)


def train_period(cfg: SparkConfig, run_dir: Path, k: int, phase: str, plan: tuple | None = None,
                 report: dict | None = None) -> list[dict]:
    """Load the phase's start checkpoint and the KL anchor, train one period on the stage's
    batch (`plan`: `_period_batch`'s result when the caller has it), save the checkpoint (with
    optimizer and scheduler state); the `updates` rows. Under torchrun every process runs this:
    each loads the same weights and batch, the trainer deals out the micro-batches and sums the
    gradients, and only rank 0 saves."""
    from spark_core.fsdp import full_model_state, full_optimizer_state, local_numel, shard
    from spark_core.trainer import rank_world

    source = _start_model(cfg, run_dir, k, phase)
    batch, lr_scale, overrides = plan or _period_batch(cfg, run_dir, k, phase)
    torch.manual_seed(cfg.seed * 1000 + 2 * k + (phase == "reward"))
    if cfg.train.lora is not None:
        # Adapters on the start model; the KL anchor is the same model with them off.
        model, tok = lora.load_trainable(source) if lora.is_adapter_dir(source) else _fresh_adapters(cfg, source)
        ref = None
    else:
        model, tok = load_checkpoint(source)
        ref, _ = load_checkpoint(start_model(cfg, run_dir))  # the KL anchor is the start model throughout the run
    r = cfg.rollout
    device = pick_device(r.device)
    rank, world = rank_world()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (train_worker set it)
    sharded = cfg.train.fsdp and world > 1
    if sharded:  # before the optimizer is made: it must hold the shards
        shard(model.to(device), device)
        shard(ref.to(device), device, frozen=True)
    steps_per_iteration = 2 * -(-r.batch_prompts * r.group_size // cfg.train.mini_batch_size)
    trainer = Trainer(model, ref, settings_from_config(cfg.train, 1000 * steps_per_iteration, r.temperature),
                      tok.pad_token_id, device)
    if report is not None and world > 1:  # what each process holds of the policy's parameters
        import torch.distributed as dist

        held = [None] * world
        dist.all_gather_object(held, sum(local_numel(p) for p in model.parameters()))
        report["parameters_held"] = held
    if k > 0 or phase == "reward":  # a run checkpoint: continue its optimizer and schedule
        trainer.load_state(source)
    _fault(f"train_{phase}.rank-{rank}")
    updates = trainer.train_period(batch, phase, lr_scale=lr_scale, **overrides) if batch else []
    # Under FSDP the full weights and optimizer state are gathered to rank 0 (collectives: every rank).
    weights = full_model_state(model) if sharded else None
    opt_state = full_optimizer_state(model, trainer.opt) if sharded else None

    def save(tmp: Path) -> None:
        if trainer.lora:
            lora.save_adapter(model, tok, tmp, start_model(cfg, run_dir))
        elif sharded:
            plain, _ = load_checkpoint(source)
            plain.load_state_dict(weights)
            save_checkpoint(plain, tok, tmp)
        else:
            save_checkpoint(model.cpu(), tok, tmp)
        trainer.save_state(tmp, opt_state)

    if rank == 0:
        _replace_dir(checkpoint_dir(run_dir, k, phase), save)
    return updates


def _fresh_adapters(cfg: SparkConfig, source: Path):
    """(the start model with new LoRA adapters, tokenizer): the first period of a LoRA run. An
    adapter checkpoint of another run as the start model is refused (adapters do not stack)."""
    if lora.is_adapter_dir(source):
        raise CheckpointError(f"{source}: LoRA adapters cannot start a LoRA run; merge them first or start from their base")
    model, tok = load_checkpoint(source)
    return lora.attach(model, cfg.train.lora), tok


def train_under_torchrun(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> tuple[list[dict], list[int]]:
    """`train_period` as `torchrun --standalone --nproc-per-node P` (spark_core/train_worker.py);
    its exit code is the stage's state: any rank failing fails the stage, and the checkpoint is
    only put in place by rank 0 after its period, so a re-run redoes the stage from its inputs."""
    import subprocess
    import sys
    import tempfile

    P = cfg.train.processes
    run_dir = Path(run_dir).resolve()
    with tempfile.TemporaryDirectory(dir=staging_dir(run_dir)) as tmp:
        conf, result, logf = Path(tmp) / "config.json", Path(tmp) / "updates.json", Path(tmp) / "torchrun.log"
        conf.write_text(cfg.model_dump_json())
        threads = max(1, (os.cpu_count() or 1) // P) if pick_device(cfg.rollout.device).type == "cpu" else 1
        env = os.environ | {"OMP_NUM_THREADS": os.environ.get("SPARK_TRAIN_THREADS", str(threads))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={P}",
               "-m", "spark_core.train_worker", str(conf), str(run_dir), str(k), phase, str(result)]
        with open(logf, "wb") as log_out:
            code = subprocess.run(cmd, env=env, stdout=log_out, stderr=subprocess.STDOUT).returncode
        if code != 0:
            lines = logf.read_text(errors="replace").strip().splitlines()
            # The first exception a rank raised says why; torchrun's own summary follows it.
            errors = [ln.strip() for ln in lines
                      if re.match(r"^\s*(\[rank\d+\]:\s*)?[\w.]*(Error|Exception)\b|^\s*what\(\):", ln)]
            # A surviving rank reports only that its peer went away; the dead rank's error says why.
            first = [e for e in errors if not re.search(r"Connection reset|Connection closed|Read error|ChildFailedError", e)]
            why = (first or errors or [" | ".join(lines[-3:])])[0]
            raise RuntimeError(f"iteration {k} train_{phase}: torchrun with {P} processes failed (exit {code}); "
                               f"nothing was saved, a re-run redoes the stage. {why[:500]}")
        doc = json.loads(result.read_text())
        return doc["updates"], doc["parameters_held"]  # the rows; what each process held of the policy


def warmup_stage(cfg: SparkConfig, run_dir: Path, k: int) -> dict | None:
    """Stage `warmup` (iteration 0, when `warmup.enabled`): the format warm-up of spark_core/warmup.py,
    shared by every run that asks for the same one (spark_core/shared_warmup.py): found by its key
    and reused, or made once under its lock. The manifest names the shared checkpoint (`shared`),
    its key, whether this run reused it, and the parse rates before and after; the examples are
    copied to `RUN/warmup/examples.parquet`. None when it does not apply."""
    if k != 0 or not cfg.warmup.enabled:
        return None
    run_dir = Path(run_dir)
    doc = read_manifest(run_dir, "warmup", 0)
    if doc and doc.get("shared") and not shared_warmup.is_complete(Path(doc["shared"])):
        log.warning("%s: the shared warm-up this run used is gone or damaged; the warmup stage is redone", doc["shared"])
        manifest_path(run_dir, "warmup", 0).unlink()

    def body() -> dict:
        base = check_model_dir(base_model(cfg))
        key = shared_warmup.warmup_key(cfg, base)
        root = shared_warmup.warmups_root(base, run_dir)
        shared = root / key
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / f"{key}.lock", wait_s=6 * 3600, what=f"warm-up {shared}"):
            reused = shared_warmup.is_complete(shared)
            if reused:
                log.info("warm-up: reusing %s (key %s)", shared, key)
            else:
                _make_warmup(cfg, run_dir, base, shared, key)
        info = shared_warmup.read_info(shared)
        side = run_dir / "warmup" / "examples.parquet"
        atomic_write_bytes(side, (shared / shared_warmup.EXAMPLES).read_bytes(), run_dir)
        return dict(outputs={"examples": side}, rows={"examples": info["examples"]}, inputs={"checkpoint": str(base)},
                    shared=str(shared), warmup_key=key, reused=reused, made_seconds=info["seconds"],
                    metrics=info["metrics"])

    return _run_stage(cfg, run_dir, "warmup", 0, iteration_hash(cfg), body)


def _make_warmup(cfg: SparkConfig, run_dir: Path, base: Path, shared: Path, key: str) -> None:
    """Make the warm-up of `cfg` from `base` into the shared folder `shared` (written beside, then
    renamed whole): checkpoint, examples and `warmup.json` (metrics, seconds, key)."""
    start = time.monotonic()
    w, r, sp = cfg.warmup, cfg.rollout, cfg.spark
    tasks = solve_tasks(warmup.warmup_problems(problems_of(run_dir, "train"), w.problems, cfg.seed), cfg.prompts.solve)
    seed = cfg.seed * 1000 + 900
    solve_spec = SamplingSpec(w.samples, r.temperature, r.top_p, r.max_new_tokens, seed=seed)
    with open_engine(cfg, base, seed) as engine:
        groups = engine.generate([t.prompt for t in tasks], solve_spec)
        jtasks = warmup.recycled_judge_tasks(tasks, groups, w.judge_prompts, cfg.seed, sp.template_set, sp.judge_input)
        judge_spec = SamplingSpec(w.samples, sp.reward_temperature, r.top_p, r.judge_max_new_tokens, seed=seed + 1)
        jgroups = engine.generate([t.prompt for t in jtasks], judge_spec) if jtasks else []
    before = warmup.parse_rates(tasks + jtasks, groups + jgroups)
    rng = random.Random(f"{cfg.seed}|warmup-examples")
    refl = [(t, g) for t, g in zip(jtasks, jgroups) if t.kind == "reflection"]
    judg = [(t, g) for t, g in zip(jtasks, jgroups) if t.kind != "reflection"]
    examples = (warmup.solve_examples(tasks, groups, rng)
                + warmup.solve_examples([t for t, _ in refl], [g for _, g in refl], rng)
                + warmup.judge_examples([t for t, _ in judg], [g for _, g in judg], rng))
    if not examples:
        raise ValueError("warm-up: no sampled response was usable (none correct and finished, no readable "
                         "verdict); raise warmup.samples or rollout.max_new_tokens, or choose another prompts.solve")
    torch.manual_seed(seed)
    model, tok = load_checkpoint(base)
    stops = Counter(s.token_ids[-1] for g in groups + jgroups for s in g if s.finish_reason == "stop" and s.token_ids)
    eos_id = stops.most_common(1)[0][0] if stops else tok.eos_token_id  # the end token the model itself uses
    seqs = warmup.training_sequences(examples, lambda ps: encode_prompts(tok, ps, cfg.prompts.system), tok, eos_id)
    settings = TrainSettings(lr=w.lr, mini_batch_size=w.batch_size, micro_batch_size=min(w.batch_size, cfg.train.micro_batch_size),
                             beta=0.0, blocked_logits=cfg.train.blocked_logits,
                             gradient_checkpointing=cfg.train.gradient_checkpointing, bf16_autocast=cfg.train.bf16_autocast)
    trainer = Trainer(model, None, settings, tok.pad_token_id, pick_device(r.device))
    updates: list[dict] = []
    for epoch in range(w.epochs):
        order = list(range(len(seqs)))
        random.Random(f"{cfg.seed}|warmup-epoch|{epoch}").shuffle(order)
        updates += trainer.sft_period([seqs[i] for i in order], what=f"supervised epoch {epoch + 1}/{w.epochs}")
    tmp = shared.with_name(shared.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model.cpu(), tok, tmp)
    del model, trainer  # free the weights and optimizer state before the check loads the checkpoint
    check_spec = SamplingSpec(w.check_samples, r.temperature, r.top_p, r.max_new_tokens, seed=seed + 2)
    with open_engine(cfg, tmp, seed + 2) as engine:
        after_groups = engine.generate([t.prompt for t in tasks], check_spec)
        after_jgroups = engine.generate([t.prompt for t in jtasks], replace(check_spec, seed=seed + 3,
                                        temperature=sp.reward_temperature, max_new_tokens=r.judge_max_new_tokens)) if jtasks else []
    after = warmup.parse_rates(tasks + jtasks, after_groups + after_jgroups)
    pq.write_table(pa.Table.from_pylist([asdict(e) for e in examples]), tmp / shared_warmup.EXAMPLES)
    metrics = {f"{m}_before": v for m, v in before.items()} | {f"{m}_after": v for m, v in after.items()}
    metrics |= {f"examples_{kind}": n for kind, n in Counter(e.kind for e in examples).items()}
    metrics["rewritten_share"] = sum(e.rewritten for e in examples) / len(examples)
    losses = [u["loss"] for u in updates if not u["skipped"]]
    metrics |= {"sft_steps": len(updates), "sft_loss_first": losses[0] if losses else None,
                "sft_loss_last": losses[-1] if losses else None}
    info = {"key": key, "base": str(Path(base).resolve()), "made_by": str(Path(run_dir).resolve()),
            "examples": len(examples), "seconds": time.monotonic() - start,
            "metrics": {m: v for m, v in metrics.items() if v is not None}}
    (tmp / shared_warmup.INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(shared, ignore_errors=True)  # a damaged earlier copy
    tmp.rename(shared)


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

    return _run_stage(cfg, run_dir, "recycle", k, iteration_hash(cfg), body)


def judge_set_path(run_dir: Path) -> Path:
    return Path(run_dir) / "eval" / "judge_set.parquet"


def judge_set_stage(cfg: SparkConfig, run_dir: Path) -> list[JudgeItem]:
    """Stage `judge_set` (once per run): the labelled reward benchmark, built from the *base*
    model's sampled answers to held-out problems; frozen, never trained on."""
    run_dir = Path(run_dir)
    key = config_hash([iteration_hash(cfg), cfg.eval.judge_problems, cfg.eval.judge_samples])
    path = judge_set_path(run_dir)
    if not stage_complete(run_dir, "judge_set", None, key):
        with progress.stage("judge set"):
            start = time.monotonic()
            problems = problems_of(run_dir, "held_out")[: cfg.eval.judge_problems]
            items: list[JudgeItem] = []
            if problems:
                with open_engine(cfg, start_model(cfg, run_dir), cfg.seed) as engine:
                    groups = sample_groups(engine, problems, cfg.eval.judge_samples, cfg.rollout.max_new_tokens, cfg.seed + 17,
                                           cfg.prompts.solve)
                items = build_judge_set(groups, cfg.seed, cfg.spark.template_set, cfg.spark.judge_input)
            table = pa.Table.from_pylist([asdict(it) for it in items], schema=_JUDGE_ITEM_SCHEMA)
            atomic_write_parquet(table, path, staging_dir(run_dir))
            write_manifest(run_dir, "judge_set", None, key, outputs={"judge_set": path},
                           rows=dict(Counter(it.kind for it in items)), inputs={"checkpoint": str(start_model(cfg, run_dir))},
                           seconds=time.monotonic() - start)
    return [JudgeItem(**row) for row in pq.read_table(path).to_pylist()]


_JUDGE_ITEM_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("kind", pa.string()), ("wording", pa.string()), ("prompt", pa.string()),
    ("label", pa.string()), ("positive", pa.string()), ("negative", pa.string()),
    ("candidate_correct", pa.bool_()), ("source_prompt_id", pa.string()),
])


def evaluate_checkpoint(cfg: SparkConfig, engine, held: list[Problem], items: list[JudgeItem]) -> tuple[dict, list[dict]]:
    """Every held-out metric of one model: policy, judge set, reflection, test-time scaling."""
    e, r, ts, solve = cfg.eval, cfg.rollout, cfg.spark.template_set, cfg.prompts.solve
    problems = held[: e.problems]
    m, answers = policy_metrics(engine, problems, e.samples, r.max_new_tokens, cfg.seed + 23, solve)
    jm, judged = run_judge_set(engine, items, r.judge_max_new_tokens) if items else ({}, [])
    m |= jm
    if e.tts:
        m |= tts_reflect(engine, problems, answers, ts, r.max_new_tokens, r.judge_max_new_tokens)[0]
    if e.best_of_n:
        m |= tts_best_of_n(engine, problems, e.best_of_n, ts, r.max_new_tokens, r.judge_max_new_tokens, cfg.seed + 29,
                           solve)
    return m, judged


def evaluate_stage(cfg: SparkConfig, run_dir: Path, k: int) -> dict | None:
    """Stage `evaluate` (after every E-th iteration): held-out metrics of checkpoint k into
    `evals`, and the judge's responses to the reward benchmark beside it
    (`RUN/eval/iteration=k/judge.parquet`). Returns None on iterations that are not evaluated."""
    run_dir = Path(run_dir)
    if (k + 1) % cfg.eval.every:
        return None

    def body() -> dict:
        items = judge_set_stage(cfg, run_dir)
        source = checkpoint_dir(run_dir, k)
        held = problems_of(run_dir, "held_out")
        with open_engine(cfg, source, cfg.seed) as engine:
            metrics, judged = evaluate_checkpoint(cfg, engine, held, items)
        n = min(cfg.eval.problems, len(held))
        path = write_table(run_dir, "evals", rows_for_evals(metrics, "held_out", n), iteration=k, part="evaluate")
        side = run_dir / "eval" / f"iteration={k}" / "judge.parquet"
        if judged:
            atomic_write_parquet(pa.Table.from_pylist(judged), side, staging_dir(run_dir))
        return dict(outputs={"evals": path}, rows={"evals": len(metrics), "judge_items": len(judged)},
                    inputs={"checkpoint": str(source)}, metrics={a: b for a, b in metrics.items() if b is not None})

    return _run_stage(cfg, run_dir, "evaluate", k, eval_hash(cfg), body)


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
    _fault("finish")
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


def retired_checkpoints(cfg: SparkConfig, run_dir: Path, k: int) -> list[Path]:
    """The checkpoint folders closing iteration k removes: every intermediate policy checkpoint
    (a killed earlier close may have left some behind), and the iteration checkpoints older
    than the newest `keep_last` that are not every `keep_every`-th (the warm-up's is kept)."""
    c = cfg.checkpoints
    policy = [checkpoint_dir(run_dir, old, "policy") for old in range(k, -1, -1)]
    kept = lambda old: old > k - c.keep_last or (c.keep_every and (old + 1) % c.keep_every == 0)  # noqa: E731
    done = [checkpoint_dir(run_dir, old) for old in range(k, -1, -1) if not kept(old)]
    return [p for p in policy + done if p.exists()]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def disk_use(run_dir: Path, doomed: list[Path] = ()) -> dict:
    """Bytes on disk of the run and its parts, as they will be once `doomed` is removed."""
    gone = sum(_size(p) for p in doomed)
    ckpt = run_dir / "checkpoints"
    out = {"run_bytes": _size(run_dir) - gone, "checkpoints_bytes": (_size(ckpt) if ckpt.exists() else 0) - gone}
    for part in ("tables", "samples"):
        out[f"{part}_bytes"] = _size(run_dir / part) if (run_dir / part).exists() else 0
    return out


def kept_checkpoints(run_dir: Path, doomed: list[Path] = ()) -> list[str]:
    ckpt = run_dir / "checkpoints"
    return sorted(p.name for p in ckpt.iterdir()
                  if p.is_dir() and p not in doomed and not p.name.endswith((".tmp", ".old"))) if ckpt.exists() else []


def stage_calls(cfg: SparkConfig, run_dir: Path, k: int) -> list[tuple[str, Callable[[], dict | None]]]:
    """The stages of iteration k in order, as (name, call) pairs; the flow wraps each in a task."""
    return [
        ("warmup", lambda: warmup_stage(cfg, run_dir, k)),
        ("rollout_policy", lambda: rollout(cfg, run_dir, k, "policy")),
        ("verify_policy", lambda: verify(cfg, run_dir, k, "policy")),
        ("train_policy", lambda: train(cfg, run_dir, k, "policy")),
        ("recycle", lambda: recycle_stage(cfg, run_dir, k)),
        ("rollout_reward", lambda: rollout(cfg, run_dir, k, "reward")),
        ("verify_reward", lambda: verify(cfg, run_dir, k, "reward")),
        ("train_reward", lambda: train(cfg, run_dir, k, "reward")),
        ("evaluate", lambda: evaluate_stage(cfg, run_dir, k)),
    ]


def run_iteration(cfg: SparkConfig, run_dir: Path, k: int) -> dict:
    """Run every unfinished stage of iteration k, then close it; returns the `iteration` manifest."""
    run_dir = Path(run_dir)
    if stage_complete(run_dir, DONE, k, iteration_hash(cfg)):
        return read_manifest(run_dir, DONE, k)
    removed = clean_staging(run_dir)
    if removed:
        log.warning("removed %d half-written file(s) left by an interrupted write", removed)
    for _, call in stage_calls(cfg, run_dir, k):
        call()
    return finish(cfg, run_dir, k)


def claim_run(cfg: SparkConfig, run_dir: Path) -> None:
    """Bind a run directory to its config on first use; refuse a different config later.

    Without this, a changed config would silently redo iteration 0 over the tables of the
    old one. Changing only what `iteration_hash` leaves out (evaluation, iterations per flow
    run, the bootstrap recipe) is allowed.
    """
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    key = iteration_hash(cfg)
    if path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("config_hash") != key:
            raise InputError(f"{run_dir}: this run was made with another config (hash {doc.get('config_hash')}, "
                             f"this one {key}; the old one is in {path}); use a new run name")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps({"config_hash": key, "config": cfg.resolved()}, indent=2) + "\n").encode(), run_dir)


def summary_line(k: int, m: dict) -> str:
    """One line per finished iteration, for logs and the CLI."""
    def f(key: str) -> str:
        return f"{m[key]:.3f}" if key in m else "-"

    line = (f"iteration {k}: solve {f('policy/solve_accuracy')} (held-out greedy {f('eval/policy_accuracy')}), "
            f"judge pointwise {f('reward/pointwise_accuracy')} pairwise {f('reward/pairwise_accuracy')} "
            f"(held-out {f('eval/judge_accuracy')}), reflection {f('reward/reflection_accuracy')}; "
            f"format: policy boxed {f('policy/boxed_share')}, verdicts parsed {f('reward/verdict_parse_rate')}")
    if "warmup/solve_boxed_before" in m:
        line += (f" (warm-up: boxed {f('warmup/solve_boxed_before')} -> {f('warmup/solve_boxed_after')}, "
                 f"verdicts {f('warmup/judge_parsed_before')} -> {f('warmup/judge_parsed_after')})")
    return line
