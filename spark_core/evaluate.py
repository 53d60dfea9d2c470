"""Evaluation on held-out data only: what the evaluate stage writes to the `evals` table.

For now (the evaluation issue grows it): greedy policy accuracy on the first N held-out
problems, and, for synthetic integer problems, greedy judge accuracy on a balanced labelled
judge set (pointwise Yes/No and A/B, pairwise A/B; never trained on) with the parse rate and
the share of each verdict, so a constant verdict shows as 50% and a one-sided share.
"""

from __future__ import annotations

from spark_core.bootstrap import judge_metrics, judge_set
from spark_core.problems import Problem
from spark_core.rollout import Engine, SamplingSpec
from spark_core.verify import verify_response


def policy_accuracy(engine: Engine, problems: list[Problem], max_new_tokens: int) -> float:
    """Share of problems whose greedy response verifies against the reference answer."""
    groups = engine.generate([p.question for p in problems], SamplingSpec(1, 0.0, 1.0, max_new_tokens, seed=0))
    return sum(bool(verify_response(g[0].text, p.answer).correct) for p, g in zip(problems, groups)) / len(problems)


def _integer_answers(problems: list[Problem]) -> bool:
    return all(p.answer.lstrip("-").isdigit() for p in problems)


def evaluate(engine: Engine, held_out: list[Problem], n_problems: int, n_judge: int, max_new_tokens: int,
             seed: int) -> list[dict]:
    """`evals` rows (benchmark, metric, value, n) for one checkpoint."""
    rows = []
    policy = held_out[:n_problems]
    if policy:
        rows.append(dict(benchmark="held_out", metric="policy_accuracy",
                         value=policy_accuracy(engine, policy, max_new_tokens), n=len(policy)))
    judged = held_out[:n_judge]
    if judged and _integer_answers(judged):  # the labelled set needs near-miss wrong answers
        examples = judge_set(judged, seed)
        m = judge_metrics(engine, examples)
        for name in ("judge_accuracy", "judge_pointwise_accuracy", "judge_pairwise_accuracy", "judge_parse_rate"):
            rows.append(dict(benchmark="held_out", metric=name, value=m[name], n=len(examples)))
        for verdict, share in m["judge_verdict_shares"].items():
            rows.append(dict(benchmark="held_out", metric=f"judge_verdict_share_{verdict}", value=share, n=len(examples)))
    return rows
