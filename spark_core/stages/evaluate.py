"""Stage `evaluate` (every `eval.every`-th iteration) and the run's frozen judge set.

Reads: checkpoint k, the held-out problems, `eval/judge_set.parquet` (built once from the start
model's answers). Writes: the `evals` table part and `eval/iteration=k/judge.parquet`."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_core import progress
from spark_core.config import SparkConfig, config_hash
from spark_core.evaluation.evaluate import (
    JudgeItem, build_judge_set, policy_metrics, rows_for_evals, run_judge_set, sample_groups, tts_best_of_n, tts_reflect,
)
from spark_core.data.problems import Problem
from spark_core.rundir import (
    checkpoint_dir, eval_hash, iteration_hash, open_engine, problems_of, run_stage, start_model,
)
from spark_core.data.store import atomic_write_parquet, stage_complete, staging_dir, write_manifest, write_table


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

    return run_stage(cfg, run_dir, "evaluate", k, eval_hash(cfg), body)
