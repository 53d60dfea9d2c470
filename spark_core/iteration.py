"""One whole SPARK iteration as a single restartable step (until the Prefect stages split it).

    policy period -> recycle into the judge cache -> reward period -> checkpoint

Reads the run's `problems` table and the previous iteration's checkpoint (or the base model),
writes the iteration's `rollouts`, `updates` and `judge_data` parts, the checkpoint
`RUN/checkpoints/iteration=<k>/` (Hugging Face directory plus trainer state), then the
manifest. Killed midway, a re-run redoes the iteration from its inputs: every part is
replaced (not appended), the judge cache selects the same rows, and the checkpoint directory
appears only complete (written beside, then renamed), so nothing is duplicated or lost.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path

import torch

from spark_core.checkpoint import load_checkpoint, save_checkpoint
from spark_core.config import SparkConfig, config_hash
from spark_core.periods import groups_for_recycling, judge_tasks, run_period, solve_tasks
from spark_core.problems import Problem
from spark_core.recycle import recycle, take_from_cache, write_cache
from spark_core.rollout import HFEngine, SamplingSpec
from spark_core.store import read_manifest, read_table, stage_complete, write_manifest, write_table
from spark_core.trainer import Trainer, settings_from_config

log = logging.getLogger(__name__)

STAGE = "iteration"
KEEP_CHECKPOINTS = 2


def checkpoint_dir(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"iteration={iteration}"


def iteration_hash(cfg: SparkConfig) -> str:
    """Everything an iteration depends on (all of the config but the bootstrap recipe)."""
    data = cfg.resolved()
    data.pop("bootstrap")
    return config_hash(data)


def resolve_model_path(path: str | Path) -> Path:
    """A relative model path is taken from the working directory, else from the repository root."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return Path(__file__).resolve().parents[1] / path


def completed_iterations(run_dir: Path, cfg: SparkConfig) -> int:
    """How many iterations, from 0, are complete for this config."""
    k = 0
    while stage_complete(run_dir, STAGE, k, iteration_hash(cfg)):
        k += 1
    return k


def run_iteration(cfg: SparkConfig, run_dir: Path, k: int, base_dir: Path | None = None) -> dict:
    """Run iteration `k` (skipped when complete); returns its manifest."""
    run_dir = Path(run_dir)
    key = iteration_hash(cfg)
    if stage_complete(run_dir, STAGE, k, key):
        return read_manifest(run_dir, STAGE, k)
    start = time.monotonic()
    base = resolve_model_path(base_dir or cfg.model.path)
    source = base if k == 0 else checkpoint_dir(run_dir, k - 1)
    model, tok = load_checkpoint(source)
    ref, _ = load_checkpoint(base)  # the KL anchor is the base model throughout the run
    engine = HFEngine(model, tok, device=cfg.rollout.device, dtype=cfg.rollout.dtype)
    steps_per_iteration = 2 * -(-cfg.rollout.batch_prompts * cfg.rollout.group_size // cfg.train.mini_batch_size)
    trainer = Trainer(model, ref, settings_from_config(cfg.train, 1000 * steps_per_iteration, cfg.rollout.temperature),
                      tok.pad_token_id, engine.device)
    if k > 0:
        trainer.load_state(source)

    problems = [Problem(r["id"], r["question"], r["answer"], r["solution"], r["source"])
                for r in read_table(run_dir, "problems").to_pylist() if r["split"] == "train"]
    if not problems:
        raise ValueError(f"{run_dir}: the problems table has no training problems; run `spark prepare` first")
    rng = random.Random(f"{cfg.seed}|iteration|{k}")
    tasks = solve_tasks(rng.sample(problems, min(cfg.rollout.batch_prompts, len(problems))))
    r = cfg.rollout
    spec = SamplingSpec(r.group_size, r.temperature, r.top_p, r.max_new_tokens, seed=cfg.seed * 1000 + 2 * k)
    run = run_dir.name
    torch.manual_seed(cfg.seed * 1000 + k)
    prows, pupdates, pm = run_period(engine, trainer, tasks, spec, "policy", cfg.train.advantage, run=run)
    write_table(run_dir, "rollouts", prows, iteration=k, part="policy")

    sp = cfg.spark
    recycled = recycle(groups_for_recycling(prows, tasks), cfg.seed, sp.template_set, sp.judge_input,
                       sp.mixed_pointwise, salt=f"iteration={k}", balance_labels=sp.balance_labels)
    write_cache(run_dir, k, recycled.rows)
    batch = take_from_cache(run_dir, k, r.batch_prompts, sp.balance_labels)
    rspec = SamplingSpec(r.group_size, sp.reward_temperature, r.top_p, r.judge_max_new_tokens, seed=cfg.seed * 1000 + 2 * k + 1)
    overrides = {"entropy_coef": sp.reward_entropy_coef}
    if sp.reward_clip_high is not None:
        overrides["clip_high"] = sp.reward_clip_high
    rrows, rupdates, rm = run_period(engine, trainer, judge_tasks(batch), rspec, "reward", cfg.train.advantage,
                                     lr_scale=sp.reward_lr_scale, run=run, **overrides) if batch else ([], [], {})
    if rrows:
        write_table(run_dir, "rollouts", rrows, iteration=k, part="reward")
    write_table(run_dir, "updates", pupdates + rupdates, iteration=k, part="train")

    out = checkpoint_dir(run_dir, k)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tok, tmp)
    trainer.save_state(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    for old in range(k - KEEP_CHECKPOINTS, -1, -1):  # retention: disk stays bounded
        shutil.rmtree(checkpoint_dir(run_dir, old), ignore_errors=True)

    metrics = {f"policy/{a}": b for a, b in pm.items()} | {f"reward/{a}": b for a, b in rm.items()}
    metrics |= {f"recycle/made_{a}": b for a, b in recycled.made.items()}
    metrics |= {f"recycle/dropped/{a}": b for a, b in recycled.dropped.items()}
    write_manifest(
        run_dir, STAGE, k, key, outputs={"checkpoint": out},
        rows={"rollouts": len(prows) + len(rrows), "updates": len(pupdates) + len(rupdates),
              "judge_data_made": len(recycled.rows), "judge_data_consumed": len(batch)},
        inputs={"checkpoint": str(source)}, seconds=time.monotonic() - start, extra={"metrics": metrics},
    )
    return read_manifest(run_dir, STAGE, k)
