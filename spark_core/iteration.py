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
The stages live one per module in spark_core/stages/ (the run folder's layout, hashes and the
stage runner in spark_core/rundir.py); this module is the chain (`stage_calls`), defined once:
`spark iterate` runs it here, and the flow (flows/spark_flow.py) runs the same chain as Prefect
tasks (tasks/stages.py), one per stage. Nothing here imports Prefect.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable

from spark_core.config import SparkConfig
from spark_core.rundir import CHAIN, DONE, iteration_hash, stage_name
from spark_core.stages.evaluate import evaluate_stage
from spark_core.stages.finish import finish
from spark_core.stages.recycle import recycle_stage
from spark_core.stages.rollout import rollout
from spark_core.stages.train import train
from spark_core.stages.verify import verify
from spark_core.stages.warmup import warmup_stage
from spark_core.data.store import clean_staging, read_manifest, stage_complete

log = logging.getLogger(__name__)


#: What each step of the chain (spark_core/rundir.py `CHAIN`) runs here, given (cfg, run_dir, k, phase).
STEPS: dict[str, Callable[[SparkConfig, Path, int, str | None], dict | None]] = {
    "warmup": lambda cfg, run_dir, k, _: warmup_stage(cfg, run_dir, k),
    "rollout": rollout,
    "verify": verify,
    "train": train,
    "recycle": lambda cfg, run_dir, k, _: recycle_stage(cfg, run_dir, k),
    "evaluate": lambda cfg, run_dir, k, _: evaluate_stage(cfg, run_dir, k),
}


def stage_calls(cfg: SparkConfig, run_dir: Path, k: int) -> list[tuple[str, Callable[[], dict | None]]]:
    """The stages of iteration k in order (the chain), as (name, call) pairs."""
    return [(stage_name(step, phase), partial(STEPS[step], cfg, run_dir, k, phase)) for step, phase in CHAIN]


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
