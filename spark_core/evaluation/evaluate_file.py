"""`spark eval` and `spark judge-eval`: evaluate a checkpoint outside a run.

- `eval_benchmark`: policy accuracy (greedy, mean@k, pass@k) on a benchmark, optionally with
  test-time self-reflection or self-verified best-of-N. Benchmarks: `synthetic` (the config's
  held-out problems), the shared `gsm8k`, `math500`, `aime24`, `amc23` (from the benchmarks
  folder), or any JSONL/Parquet problem file.
- `judge_eval_file`: the model as a judge of a user's labelled responses (one pointwise Yes/No
  prompt each): accuracy, precision/recall of "correct", unparsable verdicts, AUROC.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from spark_core import REPO
from spark_core.config import SparkConfig
from spark_core.evaluation.evaluate import JudgeItem, policy_metrics, run_judge_set, tts_best_of_n, tts_compare, tts_reflect
from spark_core.data.problems import Problem, load_problems, problem_sets
from spark_core.data.records import InputError, read_records
from spark_core.model.rollout import make_engine
from spark_core.judge.templates import JUDGE_INPUTS, candidate_text, templates
from spark_core.verify import extract_answer

BENCHMARKS = ("gsm8k", "math500", "aime24", "amc23")


def benchmarks_dir() -> Path:
    """`SPARK_BENCHMARKS`, else ../shared/data/benchmarks beside the repository."""
    return Path(os.environ.get("SPARK_BENCHMARKS") or REPO.parent / "shared" / "data" / "benchmarks")


def benchmark_problems(name: str, cfg: SparkConfig) -> list[Problem]:
    """The problems of a named benchmark or file; `synthetic` is the config's held-out split."""
    if name == "synthetic":
        return problem_sets(cfg.problems, cfg.seed)[1]
    path = benchmarks_dir() / f"{name}.jsonl" if name in BENCHMARKS else Path(name)
    if not path.is_file():
        known = ", ".join(("synthetic",) + BENCHMARKS)
        raise InputError(f"{path}: no such benchmark file (names: {known}, or a JSONL/Parquet path; "
                         f"set SPARK_BENCHMARKS for the shared folder)")
    return load_problems(path)


def eval_benchmark(cfg: SparkConfig, checkpoint: Path, benchmark: str, tts: str = "none", limit: int | None = None,
                   samples: int = 0, best_of: int = 4, engine: str = "hf", responses: Path | None = None,
                   compare_n: tuple[int, ...] = (4, 8), samples_out: Path | None = None) -> dict:
    """Policy metrics of `checkpoint` on a benchmark; `responses`: also write each problem's greedy
    response (id, question, answer, response) as JSONL, ready for `spark verify` and `spark judge-eval`.
    `tts="compare"`: the test-time scaling rules at equal compute (`evaluate.tts_compare`) for each
    N in `compare_n`; `samples_out`: its per-sample rows (answer, correct, verdict, P(Yes)) as JSONL."""
    if tts not in ("none", "reflect", "bon", "compare"):
        raise InputError(f"--tts must be none, reflect, bon or compare, got {tts!r}")
    if tts == "compare" and (not compare_n or min(compare_n) < 1):
        raise InputError(f"--compare-n must be positive sample counts, got {list(compare_n)}")
    problems = benchmark_problems(benchmark, cfg)[:limit]
    r, ts = cfg.rollout, cfg.spark.template_set
    eng = make_engine(engine, checkpoint, device=r.device, dtype=r.dtype, seed=cfg.seed, system=cfg.prompts.system)
    solve = cfg.prompts.solve
    try:
        m, answers = policy_metrics(eng, problems, samples, r.max_new_tokens, cfg.seed, solve)
        if responses is not None:
            from spark_core.data.store import atomic_write_bytes

            rows = [{"id": p.id, "question": p.question, "answer": p.answer, "response": a} for p, a in zip(problems, answers)]
            atomic_write_bytes(Path(responses), "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows).encode())
        if tts == "reflect":
            m |= tts_reflect(eng, problems, answers, ts, r.max_new_tokens, r.judge_max_new_tokens)[0]
        elif tts == "bon":
            m |= tts_best_of_n(eng, problems, best_of, ts, r.max_new_tokens, r.judge_max_new_tokens, cfg.seed, solve)
        elif tts == "compare":
            cm, rows = tts_compare(eng, problems, sorted(set(compare_n)), ts, r.max_new_tokens, r.judge_max_new_tokens,
                                   cfg.seed, solve, greedy_answers=answers)
            m |= cm
            if samples_out is not None:
                from spark_core.data.store import atomic_write_bytes

                atomic_write_bytes(Path(samples_out), "".join(json.dumps(x) + "\n" for x in rows).encode())
    finally:
        eng.close()
    return {"benchmark": benchmark, "problems": len(problems)} | m


_TRUE = {"true", "1", "yes", "correct", "right"}
_FALSE = {"false", "0", "no", "incorrect", "wrong"}


def _label(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().casefold() in _TRUE | _FALSE:
        return value.strip().casefold() in _TRUE
    return None


def judge_eval_file(path: Path, checkpoint: Path, question_field: str, response_field: str, label_field: str,
                    template_set: str = "compact", judge_input: str = "answer", max_new_tokens: int = 96,
                    engine: str = "hf") -> tuple[dict, list[dict], list[str]]:
    """Judge each labelled response; returns (metrics, one row per judged response, row errors)."""
    if judge_input not in JUDGE_INPUTS:
        raise InputError(f"--judge-input must be one of {', '.join(JUDGE_INPUTS)}, got {judge_input!r}")
    tpl = templates(template_set, "pointwise", "yes_no")[0]
    items, errors = [], []
    for rec in read_records(path):
        where = f"{path}:{rec.number}"
        if rec.error:
            errors.append(f"{where}: {rec.error}")
            continue
        row = rec.fields
        missing = [f for f in (question_field, response_field, label_field) if f not in row]
        if missing:
            if rec.number == 1:
                raise InputError(f"{where}: no field {missing[0]!r} (fields: {', '.join(sorted(row))})")
            errors.append(f"{where}: missing field {missing[0]!r}")
            continue
        correct = _label(row[label_field])
        if correct is None:
            errors.append(f"{where}: field {label_field!r} is {row[label_field]!r}, not true/false")
            continue
        q, resp = row[question_field], row[response_field]
        if not isinstance(q, str) or not isinstance(resp, str):
            errors.append(f"{where}: {question_field!r} and {response_field!r} must be strings")
            continue
        shown = candidate_text(resp, extract_answer(resp).answer, judge_input) or resp.strip()
        items.append(JudgeItem(f"row{rec.number}", "pointwise", "yes_no", tpl.render(question=q, candidate=shown),
                               "Yes" if correct else "No", "Yes", "No", correct, f"row{rec.number}"))
    if not items:
        raise InputError(f"{path}: no usable rows" + (f" (first problem: {errors[0]})" if errors else ""))
    eng = make_engine(engine, checkpoint, seed=0)
    try:
        m, rows = run_judge_set(eng, items, max_new_tokens)
    finally:
        eng.close()
    m["unparsable"] = 1.0 - (m["judge_parse_rate"] or 0.0)
    return m, rows, errors
