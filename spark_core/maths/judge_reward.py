"""The reward period's judge samples: label weighting and expected rewards.

## Label weighting (`spark.label_weighting: inv_sqrt_ema`)

RL Tango (arXiv 2505.15034) weights a verifier's rewards by the inverse square root of each
label's recent frequency, so a label that has become rare in the judge data (as the policy
improves, the authors' rules make mostly `Yes`/positive pointwise prompts) still pulls its
weight, and the judge is not paid for drifting to the majority verdict. Here:

- **shares** within each label family, over the judge samples (pointwise and pairwise) of the
  reward batch: s(Yes) = n(Yes) / (n(Yes) + n(No)), s(A) = n(A) / (n(A) + n(B)), counted on the
  prompts' true labels;
- **a moving average** per label, m_k = decay * m_{k-1} + (1 - decay) * s_k (m_0 = s_0; a label
  absent from a batch keeps its average). Its state is written into the `verify_reward`
  manifest of iteration k and read back from iteration k-1's, so a resumed run continues it
  exactly (the manifest is written after the stage's outputs, atomically);
- **weights** w(l) = m(l)^(-1/2) / sum over the family of m(f)^(1/2), shares floored at 0.05:
  the m-weighted mean of w over a family is 1, so balanced labels (m = 1/2) give w = 1.
  Example: m(Yes) = 0.8, m(No) = 0.2: sqrt sum 0.894 + 0.447 = 1.342, w(Yes) = 1.118 / 1.342 =
  0.833, w(No) = 2.236 / 1.342 = 1.667.

**Applied to the advantages, not the rewards.** Every sample of a GRPO group answers the same
prompt, so it has the same label and the same weight; scaling a group's rewards by a constant
cancels out of (r - mean) / std exactly (and scales Dr. GRPO's r - mean by w). So the weight
multiplies the judge samples' group advantages: the group's gradient is w times as large, the
effect Tango's weighting has under an unnormalised estimator. Reflection samples are not
weighted.

## Expected rewards (`spark.judge_reward: expected`)

With 0/1 rewards a group whose sampled verdicts all agree gets zero advantage, so a judge that
has collapsed to one verdict gets no signal to leave it ("Incentivizing LLMs to self-verify",
arXiv 2506.01369, scores the verifier by the probability of the right verdict instead). Here,
per judge sample i with hard reward r_i (0/1) and p_i = P(right verdict | prompt, its own
trace up to the verdict), teacher-forced under the sampling distribution
(spark_core/maths/verdict_prob.py; p_i = 0 when no verdict was given, as its r_i is 0):

- **trace tokens** (before the verdict) get A_i = (p_i - mean_g p) / s_g;
- **the verdict token and those after it** get V_i = (r_i - p_i) / s_g;
- s_g = sqrt(var_g(p) + mean_g(p (1 - p))) under `grpo` (var with n - 1, as GRPO's std), the
  law of total variance's estimate of the std of the hard rewards, which is not 0 when the
  sampled verdicts merely happened to agree; s_g = 1 under `drgrpo`. A group with s_g < 1e-3
  (every p exactly 0 or 1) gets 0, as GRPO's all-equal groups do.

Why unbiased: A_i + V_i = (r_i - mean_g p) / s_g, the hard advantage with the baseline mean(p)
in place of mean(r). For a trace token, replacing r by E[r | trace] = p (Rao-Blackwellisation
over the verdict) leaves the policy-gradient term's expectation unchanged and lowers its
variance. The verdict token keeps the hard reward with the baseline p_i, a function of the
trace only (not of the verdict sampled), so its expected gradient is unchanged too: a wrong
verdict after a good trace gets V_i = -p_i / s_g < 0, never a reward for the trace. Bias that
remains: GRPO's own (a baseline that includes the sample itself; the std division), and p
counts only the verdict's first token (the closing brace and what follows are assumed to
follow the verdict; top-p is ignored, exact at the default top_p = 1).
Example, one pointwise group, p = [0.9, 0.6, 0.8, 0.3], r = [1, 1, 1, 0]: mean p = 0.65,
var(p) = 0.07 (n - 1), mean p(1-p) = (0.09 + 0.24 + 0.16 + 0.21) / 4 = 0.175, s = sqrt(0.245)
= 0.495; A = [0.505, -0.101, 0.303, -0.707], V = [0.202, 0.808, 0.404, -0.606].
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

FAMILIES: tuple[tuple[str, str], ...] = (("Yes", "No"), ("A", "B"))
SHARE_FLOOR = 0.05


def label_shares(labels: Iterable[str]) -> dict[str, float]:
    """Share of each label within its family (Yes/No, A/B) among the given judge labels."""
    counts = Counter(labels)
    out: dict[str, float] = {}
    for fam in FAMILIES:
        total = sum(counts[label] for label in fam)
        if total:
            out |= {label: counts[label] / total for label in fam}
    return out


def update_ema(prev: dict[str, float] | None, shares: dict[str, float], decay: float) -> dict[str, float]:
    """m_k = decay * m_{k-1} + (1 - decay) * s_k per label; first sight of a label starts at s_k;
    labels absent from this batch keep their average."""
    prev = dict(prev or {})
    out = dict(prev)
    for label, s in shares.items():
        out[label] = decay * prev[label] + (1 - decay) * s if label in prev else s
    return out


def label_weights(ema: dict[str, float]) -> dict[str, float]:
    """w(l) = m(l)^(-1/2) / sum_f m(f)^(1/2) within each family (floored shares); see the module docstring."""
    out: dict[str, float] = {}
    for fam in FAMILIES:
        if not all(label in ema for label in fam):
            continue
        m = {label: max(ema[label], SHARE_FLOOR) for label in fam}
        norm = sum(math.sqrt(v) for v in m.values())
        out |= {label: 1 / math.sqrt(v) / norm for label, v in m.items()}
    return out


def weight_advantages(rows: list[dict], weights: dict[str, float]) -> dict[str, float]:
    """Multiply each judge row's advantage by its label's weight (in place); returns monitors:
    the mean |advantage| of the judge rows before and after."""
    judged = [r for r in rows if r["kind"] in ("pointwise", "pairwise")]
    before = sum(abs(r["advantage"]) for r in judged) / len(judged) if judged else 0.0
    for r in judged:
        w = weights.get(r["label"], 1.0)
        r["advantage"] = r["advantage"] * w
        if r.get("verdict_advantage") is not None:
            r["verdict_advantage"] = r["verdict_advantage"] * w
    after = sum(abs(r["advantage"]) for r in judged) / len(judged) if judged else 0.0
    return {"judge_abs_advantage_before": before, "judge_abs_advantage_after": after}


def group_reward_variance(rows: list[dict], group_ids: list[int], kinds=("pointwise", "pairwise")) -> float | None:
    """Mean over judge groups of the population variance of their rewards (0 for a group whose
    verdicts all agree: the signal the hard 0/1 reward loses)."""
    picked = [(r["reward"], g) for r, g in zip(rows, group_ids) if r["kind"] in kinds]
    return mean_group_variance([x for x, _ in picked], [g for _, g in picked])


def mean_group_variance(values: Sequence[float], group_ids: Sequence[int]) -> float | None:
    """Mean over groups of the population variance of their values (None without values)."""
    groups: dict[int, list[float]] = {}
    for x, g in zip(values, group_ids):
        groups.setdefault(g, []).append(x)
    if not groups:
        return None
    var = [sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v) for v in groups.values()]
    return sum(var) / len(var)


JUDGE_KINDS = ("pointwise", "pairwise")
MIN_SCALE = 1e-3


def expected_advantages(hard: Sequence[float], expected: Sequence[float], group_ids: Sequence[int],
                        estimator: str = "grpo") -> tuple[list[float], list[float]]:
    """(N,) hard 0/1 rewards, (N,) p = P(right verdict | trace), (N,) group ids ->
    (trace advantages A (N,), verdict advantages V (N,)); see "Expected rewards" above."""
    if not len(hard) == len(expected) == len(group_ids):
        raise ValueError(f"hard, expected and group_ids differ in length: {len(hard)}, {len(expected)}, {len(group_ids)}")
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    trace, verdict = [0.0] * len(hard), [0.0] * len(hard)
    for idx in members.values():
        p = [expected[i] for i in idx]
        mean = sum(p) / len(p)
        var = sum((x - mean) ** 2 for x in p) / (len(p) - 1) if len(p) > 1 else 0.0
        noise = sum(x * (1 - x) for x in p) / len(p)
        if estimator == "grpo":
            scale = math.sqrt(var + noise)
        elif estimator == "drgrpo":
            scale = 1.0 if var + noise > 0 else 0.0
        else:
            raise ValueError(f"unknown advantage {estimator!r} for expected judge rewards; known: grpo, drgrpo")
        if scale < MIN_SCALE:
            continue
        for i in idx:
            trace[i] = (expected[i] - mean) / scale
            verdict[i] = (hard[i] - expected[i]) / scale
    return trace, verdict


def flat_share(values: Sequence[float], group_ids: Sequence[int]) -> float:
    """Share of groups whose values are all equal (a hard group there carries no signal)."""
    groups: dict[int, set[float]] = {}
    for v, g in zip(values, group_ids):
        groups.setdefault(g, set()).add(v)
    return sum(len(v) == 1 for v in groups.values()) / len(groups) if groups else 0.0
