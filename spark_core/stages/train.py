"""Stage `train_<phase>`: one GRPO update period.

Reads: the side file and `rollouts` part of the phase, the phase's start checkpoint (and the
KL anchor). Writes: the `updates` table part and the checkpoint `checkpoints/iteration=k[.policy]`
(weights or LoRA adapters, optimizer and scheduler state), in one process or under torchrun."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import torch

from spark_core.model import lora
from spark_core.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spark_core.config import SparkConfig
from spark_core.periods import training_batch
from spark_core.model.rollout import pick_device
from spark_core.rundir import (
    checkpoint_dir, fault, iteration_hash, phase_start_model, replace_dir, run_stage, samples_path, start_model,
)
from spark_core.stages.samples import read_samples
from spark_core.data.store import part_path, staging_dir, write_table
from spark_core.model.trainer import TRAINER_STATE, Trainer, settings_from_config


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
        source = phase_start_model(cfg, run_dir, k, phase)
        batch, lr_scale, overrides = _period_batch(cfg, run_dir, k, phase)
        out = checkpoint_dir(run_dir, k, phase)
        extra: dict = {}
        if not batch and (source / TRAINER_STATE).is_file():
            # Nothing to train on (the reward phase of policy_only, an empty cache): the weights and
            # optimizer state pass on unchanged, so copy them instead of loading and saving a model.
            updates: list[dict] = []
            replace_dir(out, lambda tmp: shutil.copytree(source, tmp))
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

    return run_stage(cfg, run_dir, f"train_{phase}", k, iteration_hash(cfg), body)


def train_period(cfg: SparkConfig, run_dir: Path, k: int, phase: str, plan: tuple | None = None,
                 report: dict | None = None) -> list[dict]:
    """Load the phase's start checkpoint and the KL anchor, train one period on the stage's
    batch (`plan`: `_period_batch`'s result when the caller has it), save the checkpoint (with
    optimizer and scheduler state); the `updates` rows. Under torchrun every process runs this:
    each loads the same weights and batch, the trainer deals out the micro-batches and sums the
    gradients, and only rank 0 saves."""
    from spark_core.model.fsdp import full_model_state, full_optimizer_state, local_numel, shard
    from spark_core.model.trainer import rank_world

    source = phase_start_model(cfg, run_dir, k, phase)
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
    fault(f"train_{phase}.rank-{rank}")
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
        replace_dir(checkpoint_dir(run_dir, k, phase), save)
    return updates


def _fresh_adapters(cfg: SparkConfig, source: Path):
    """(the start model with new LoRA adapters, tokenizer): the first period of a LoRA run. An
    adapter checkpoint of another run as the start model is refused (adapters do not stack)."""
    if lora.is_adapter_dir(source):
        raise CheckpointError(f"{source}: LoRA adapters cannot start a LoRA run; merge them first or start from their base")
    model, tok = load_checkpoint(source)
    return lora.attach(model, cfg.train.lora), tok


def train_under_torchrun(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> tuple[list[dict], list[int]]:
    """`train_period` as `torchrun --standalone --nproc-per-node P` (spark_core/model/train_worker.py);
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
               "-m", "spark_core.model.train_worker", str(conf), str(run_dir), str(k), phase, str(result)]
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
