"""`spark.format_penalty`: a response out of the answer format scores below a wrong one in format."""

import pytest

from spark_core.config import SparkConfig
from spark_core.periods import Task, in_format, period_metrics, score
from spark_core.model.rollout import Sample


def _sample(i, text):
    return Sample(0, i, text, [1, 2], [-0.1, -0.1], "stop", 3, [7, 8, 9])


SOLVE = Task("p1", "solve", "What is 3+54?", "57", "3+54")
JUDGE = Task("j1", "pointwise", "Is 57 right? Answer \\boxed{Yes} or \\boxed{No}.", "Yes")
SOLVES = ["3 + 54 = 57. \\boxed{57}", "3 + 54 = 58. \\boxed{58}", "The answer is 57.", "I think 58."]
VERDICTS = ["It checks out. \\boxed{Yes}", "\\boxed{No}", "The answer is Yes.", "\\boxed{Maybe}"]


def _rewards(task, texts, p):
    rows, _, _ = score([task], [[_sample(i, t) for i, t in enumerate(texts)]], "policy", format_penalty=p)
    return rows


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_rewards_with_the_penalty_by_hand(p):
    # solve: boxed right 1, boxed wrong 0, unboxed right -p (right, but not where the verifier reads), unboxed wrong -p
    rows = _rewards(SOLVE, SOLVES, p)
    assert [r["reward"] for r in rows] == [1.0, 0.0, -p, -p]
    assert [r["correct"] for r in rows] == [True, False, True, False]  # the verifier's verdict is kept as it is
    # group advantages come from those rewards: (r - mean) / std with n-1
    mean = (1.0 - 2 * p) / 4
    assert rows[0]["advantage"] > rows[1]["advantage"] > rows[2]["advantage"] == rows[3]["advantage"]
    assert sum(r["advantage"] for r in rows) == pytest.approx(0.0, abs=1e-6) and mean < 1.0
    # judge: boxed right 1, boxed wrong 0, an unboxed (even right) verdict -p, a boxed non-option -p
    assert [r["reward"] for r in _rewards(JUDGE, VERDICTS, p)] == [1.0, 0.0, -p, -p]


def test_without_the_penalty_rewards_are_the_verifiers():
    assert [r["reward"] for r in _rewards(SOLVE, SOLVES, 0.0)] == [1.0, 0.0, 1.0, 0.0]
    assert [r["reward"] for r in _rewards(JUDGE, VERDICTS, 0.0)] == [1.0, 0.0, 1.0, 0.0]
    assert SparkConfig().spark.format_penalty == 0.0
    assert SparkConfig.model_validate({"spark": {"format_penalty": 0.0}}).hash() == SparkConfig().hash()
    with pytest.raises(ValueError):
        SparkConfig.model_validate({"spark": {"format_penalty": -1}})


def test_parse_rates_per_kind_and_accuracy_ignore_the_penalty():
    rows = _rewards(SOLVE, SOLVES, 1.0) + _rewards(JUDGE, VERDICTS, 1.0)
    m = period_metrics(rows, [SOLVE, JUDGE], groups_of=[0] * 4 + [1] * 4)
    assert m["parse_rate_solve"] == 0.5 and m["parse_rate_pointwise"] == 0.5
    assert m["solve_accuracy"] == 0.5 and m["pointwise_accuracy"] == 0.5  # right answers, penalised or not
    assert m["verdict_parse_rate"] == 0.5
    assert in_format("reflection", "boxed", "12", "12") and not in_format("pairwise", "boxed", "C", "A")
