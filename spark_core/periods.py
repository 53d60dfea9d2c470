"""The two GRPO periods of a SPARK iteration, on top of an engine and a trainer.

- **policy period**: G responses per problem, verified against the reference answers,
  group advantages, one update period; returns the verified groups for recycling.
- **reward period**: G responses per recycled judge/reflection prompt from the just-updated
  policy, verified against their labels (exact label match / math equivalence), GRPO update.
  Judge rollouts are never recycled.

Both return plain rows for the `rollouts` and `updates` tables plus metrics, so a stage can
write them and MLflow can log them. Collapse monitors of the reward period: the share of
`Yes` among Yes/No verdicts and of `A` among A/B verdicts (pointwise and pairwise), the label
shares of the batch, the fraction of zero-variance groups, and the mean entropy of the
verdict within a group (from the G sampled verdicts: 0 when all G agree, ln 2 for an even
split), which falls to 0 as the judge collapses to a constant verdict.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch

from spark_core.maths.grpo import advantage_fn
from spark_core.data.prompts import solve_prompt
from spark_core.judge.recycle import JudgeRow, Rollout
from spark_core.judge.templates import verdict_options
from spark_core.model.rollout import Engine, Sample, SamplingSpec
from spark_core.model.trainer import Sequence_, Trainer
from spark_core.verify import DEFAULT_TIMEOUT_S, Verdict, normalize_label, verify_response


@dataclass(frozen=True)
class Task:
    """One prompt to sample G responses for, and what a right response must give."""

    prompt_id: str
    kind: str  # solve | pointwise | pairwise | reflection
    prompt: str  # the user message
    label: str  # reference answer, or Yes/No/A/B
    question: str = ""  # the problem text (solve), kept for recycling


def run_period(
    engine: Engine,
    trainer: Trainer | None,
    tasks: Sequence[Task],
    spec: SamplingSpec,
    phase: str,
    advantage: str = "grpo",
    lr_scale: float = 1.0,
    run: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **train_overrides,
) -> tuple[list[dict], list[dict], dict]:
    """Sample, verify, compute advantages, update (when a trainer is given).

    Returns (rollout rows, update rows, metrics). Reward = 1.0 for a verified-correct response,
    0.0 otherwise; a response the verifier cannot judge (None) gets 0 and is counted. The
    trainer recomputes log-probs at the sampling temperature; `train_overrides` (clip_high,
    entropy_coef) apply to this period only.
    """
    groups = engine.generate([t.prompt for t in tasks], spec)
    rows, group_ids, unjudged = score(tasks, groups, phase, advantage, run, timeout_s)
    updates = []
    if trainer is not None:
        updates = trainer.train_period(training_batch(groups, rows), phase, lr_scale=lr_scale,
                                       temperature=spec.temperature, **train_overrides)
    metrics = period_metrics(rows, tasks, groups_of=group_ids)
    metrics["unjudged"] = unjudged
    return rows, updates, metrics


def verdicts_of(tasks: Sequence[Task], groups: Sequence[Sequence[Sample]],
                timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Verdict]:
    """The verifier's verdict on every sample against its task's label, in sample order."""
    return [verify_response(s.text, task.label, timeout_s=timeout_s) for task, group in zip(tasks, groups) for s in group]


JUDGE_KINDS = ("pointwise", "pairwise")


def in_format(kind: str, rule: str | None, extracted: str | None, label: str) -> bool:
    """Whether a response is in the answer format: its answer in the `\\boxed{}` the verifier
    reads first (solve, reflection), or a boxed verdict that is one of the prompt's two options
    (pointwise, pairwise). The `boxed_share` and `verdict_parse_rate` monitors count the same."""
    if rule != "boxed":
        return False
    if kind in JUDGE_KINDS:
        return normalize_label(extracted or "") in {o.casefold() for o in verdict_options(label)}
    return True


def reward_of(correct: bool | None, in_fmt: bool, format_penalty: float = 0.0) -> float:
    """1 for a verified-correct response, 0 otherwise; with a format penalty p > 0, -p for a
    response out of format, right or wrong (so it scores below a wrong answer in format)."""
    if format_penalty > 0 and not in_fmt:
        return -format_penalty
    return 1.0 if correct else 0.0


def score(
    tasks: Sequence[Task], groups: Sequence[Sequence[Sample]], phase: str, advantage: str = "grpo", run: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S, verdicts: Sequence[Verdict] | None = None, format_penalty: float = 0.0,
) -> tuple[list[dict], list[int], int]:
    """Verify every sample against its task's label and compute group advantages.

    Returns (`rollouts` rows in sample order with reward and advantage, the group index of
    each row, how many responses the verifier could not judge). Reward: `reward_of` (1.0 for a
    verified-correct response, 0.0 otherwise, unjudgeable ones included and counted; -p out of
    format with `format_penalty` p > 0). `verdicts`: already computed (sharded verify), one per
    sample in sample order.
    """
    n = sum(len(g) for g in groups)
    if verdicts is None:
        verdicts = verdicts_of(tasks, groups, timeout_s)
    elif len(verdicts) != n:
        raise ValueError(f"{len(verdicts)} verdicts for {n} samples: the verify shards and the samples disagree")
    todo = iter(verdicts)
    rows, rewards, group_ids = [], [], []
    unjudged = 0
    for gi, (task, group) in enumerate(zip(tasks, groups)):
        for s in group:
            v = next(todo)
            unjudged += v.correct is None
            reward = reward_of(v.correct, in_format(task.kind, v.rule, v.extracted, task.label), format_penalty)
            rows.append(dict(
                run=run, phase=phase, prompt_id=task.prompt_id, sample_index=s.sample_index, kind=task.kind,
                prompt=task.prompt, response=s.text, extracted=v.extracted, rule=v.rule, label=task.label,
                correct=v.correct, reward=reward, advantage=None, prompt_tokens=s.prompt_tokens,
                response_tokens=len(s.token_ids), finish_reason=s.finish_reason,
            ))
            rewards.append(reward)
            group_ids.append(gi)
    r = torch.tensor(rewards, dtype=torch.float32)
    adv = advantage_fn(advantage)(r, torch.tensor(group_ids)) if rewards else r
    for row, a in zip(rows, adv.tolist()):
        row["advantage"] = a
    return rows, group_ids, unjudged


def training_batch(groups: Sequence[Sequence[Sample]], rows: Sequence[dict]) -> list[Sequence_]:
    """The trainer's sequences: samples (flattened in group order) paired with their rows' advantages.

    Empty responses carry no tokens to train on and are left out.
    """
    samples = [s for g in groups for s in g]
    if len(samples) != len(rows):
        raise ValueError(f"{len(samples)} samples but {len(rows)} scored rows: the rollout and verify outputs disagree")
    return [Sequence_(s.prompt_ids, s.token_ids, s.logprobs, r["advantage"], r.get("verdict_index"),
                      r.get("verdict_advantage") or 0.0) for s, r in zip(samples, rows) if s.token_ids]


def period_metrics(rows: list[dict], tasks: Sequence[Task], groups_of: list[int]) -> dict:
    """Accuracy per kind, zero-variance groups, response length, and the collapse monitors."""
    m: dict = {}
    by_group: dict[int, list[dict]] = {}
    for row, g in zip(rows, groups_of):
        by_group.setdefault(g, []).append(row)
    kinds = Counter(r["kind"] for r in rows)
    for kind in kinds:
        ks = [r for r in rows if r["kind"] == kind]
        # Right answers, whatever they scored (the reward less any format penalty).
        m[f"{kind}_accuracy"] = sum(bool(r["correct"]) if "correct" in r else r["reward"] == 1.0 for r in ks) / len(ks)
        m[f"parse_rate_{kind}"] = sum(in_format(kind, r.get("rule"), r["extracted"], r["label"]) for r in ks) / len(ks)
    m["reward_mean"] = sum(r["reward"] for r in rows) / max(1, len(rows))
    m["zero_variance_groups"] = sum(len({r["reward"] for r in g}) == 1 for g in by_group.values()) / max(1, len(by_group))
    m["response_tokens_mean"] = sum(r["response_tokens"] for r in rows) / max(1, len(rows))
    m["truncated"] = sum(r["finish_reason"] == "length" for r in rows) / max(1, len(rows))
    # The format: answers in the box the verifier reads first, verdicts that are a boxed option.
    m["boxed_share"] = sum(r.get("rule") == "boxed" for r in rows) / max(1, len(rows))
    verdicts = [(r, normalize_label(r["extracted"] or "")) for r in rows if r["kind"] in JUDGE_KINDS]
    if verdicts:
        m["verdict_parse_rate"] = sum(in_format(r["kind"], r.get("rule"), r["extracted"], r["label"])
                                      for r, _ in verdicts) / len(verdicts)
        yn = [v for r, v in verdicts if r["label"] in ("Yes", "No")]
        ab = [v for r, v in verdicts if r["label"] in ("A", "B")]
        if yn:
            m["verdict_yes_share"] = sum(v == "yes" for v in yn) / len(yn)
        if ab:
            m["verdict_a_share"] = sum(v == "a" for v in ab) / len(ab)
        labels = Counter(t.label for t in tasks if t.kind in ("pointwise", "pairwise"))
        total = sum(labels.values())
        for lab in ("Yes", "No", "A", "B"):
            m[f"label_share_{lab}"] = labels[lab] / total if total else 0.0
        entropies = []
        for g in by_group.values():
            if g[0]["kind"] in ("pointwise", "pairwise"):
                counts = Counter(normalize_label(r["extracted"] or "") for r in g)
                n = len(g)
                entropies.append(-sum(c / n * math.log(c / n) for c in counts.values()))
        m["verdict_entropy"] = sum(entropies) / len(entropies)
    return m


def solve_tasks(problems, template: str = "bare") -> list[Task]:
    """Solve tasks whose prompt is the problem through the solve template (`prompts.solve`)."""
    return [Task(p.id, "solve", solve_prompt(template, p.question), p.answer, p.question) for p in problems]


def judge_tasks(rows: Sequence[JudgeRow]) -> list[Task]:
    return [Task(r.judge_id, r.kind, r.prompt, r.label) for r in rows]


def groups_for_recycling(rows: list[dict], tasks: Sequence[Task]) -> list[list[Rollout]]:
    """Verified solve rollouts as recycling groups (judge rollouts are never recycled)."""
    by_id = {t.prompt_id: t for t in tasks if t.kind == "solve"}
    groups: dict[str, list[Rollout]] = {}
    for r in rows:
        t = by_id.get(r["prompt_id"])
        if t is None or r["kind"] != "solve":
            continue
        groups.setdefault(t.prompt_id, []).append(
            Rollout(t.prompt_id, t.question, t.label, r["sample_index"], r["response"], r["extracted"], bool(r["correct"]))
        )
    return list(groups.values())
