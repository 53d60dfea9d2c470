"""Label weighting of the reward period's judge samples (`spark.label_weighting: inv_sqrt_ema`).

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
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

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
        r["advantage"] = r["advantage"] * weights.get(r["label"], 1.0)
    after = sum(abs(r["advantage"]) for r in judged) / len(judged) if judged else 0.0
    return {"judge_abs_advantage_before": before, "judge_abs_advantage_after": after}


def group_reward_variance(rows: list[dict], group_ids: list[int], kinds=("pointwise", "pairwise")) -> float | None:
    """Mean over judge groups of the population variance of their rewards (0 for a group whose
    verdicts all agree: the signal the hard 0/1 reward loses)."""
    groups: dict[int, list[float]] = {}
    for r, g in zip(rows, group_ids):
        if r["kind"] in kinds:
            groups.setdefault(g, []).append(r["reward"])
    if not groups:
        return None
    var = [sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v) for v in groups.values()]
    return sum(var) / len(var)
