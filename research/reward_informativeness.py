"""Is the reward period's verdict reward informative about the judge's check? A probe.

The reward period rewards a judge response for its verdict alone. That teaches checking only if
a right verdict is much likelier when the trace's check was computed right than when it was
not. This samples a checkpoint's own answers to training problems (G=8, T=1), recycles them
with balanced labels, samples 8 judge responses (T=1) to each pointwise prompt, and splits them
by (label, trace's check computed right?): the share of each cell and its reward rate.
A check is "computed right" when the trace's recomputed number equals what a correct check
gives: the inverse value c-b (c+b) for an inverse trace, the reference answer for a re-solve.

Run: `.venv/bin/python research/reward_informativeness.py CHECKPOINT [--problems 96]`.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spark_core.model.bootstrap import inverse_check  # noqa: E402
from spark_core.model.checkpoint import load_checkpoint  # noqa: E402
from spark_core.config import SparkConfig  # noqa: E402
from spark_core.periods import groups_for_recycling, run_period, solve_tasks  # noqa: E402
from spark_core.data.problems import Problem, generate_problems  # noqa: E402
from spark_core.judge.recycle import recycle  # noqa: E402
from spark_core.model.rollout import HFEngine, SamplingSpec  # noqa: E402

INVERSE = re.compile(r"(-?\d+)([+-])(\d+)=(-?\d+)\. (-?\d+) vs (-?\d+):")
COMPARE = re.compile(r"(-?\d+) vs (-?\d+):")
BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def check_kind(text: str, p: Problem, candidate: str) -> str:
    """`inverse-right`, `inverse-wrong`, `forward-right`, `forward-wrong` or `none`.

    A trace whose first computation is the question itself is a re-solve (forward); any other
    `x op y=v. v vs a:` line is an inverse check."""
    m = INVERSE.search(text)
    if m and f"{m.group(1)}{m.group(2)}{m.group(3)}" != p.question.replace(" ", ""):
        inv = inverse_check(p, candidate)
        return "inverse-right" if inv is not None and m.group(4) == inv[1] else "inverse-wrong"
    m = COMPARE.search(text)
    if m:
        return "forward-right" if m.group(1) == p.answer else "forward-wrong"
    return "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--problems", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(2)
    cfg = SparkConfig()
    train, _ = generate_problems(cfg.problems, cfg.seed)
    model, tok = load_checkpoint(a.checkpoint)
    engine = HFEngine(model, tok)
    problems = random.Random(a.seed).sample(train, a.problems)
    tasks = solve_tasks(problems)
    rows, _, m = run_period(engine, None, tasks, SamplingSpec(group_size=8, max_new_tokens=48, seed=a.seed), "policy")
    groups = {g[0].prompt_id: g for g in groups_for_recycling(rows, tasks)}
    by_id = {p.id: p for p in problems}
    judge = [r for r in recycle(groups.values(), a.seed, balance_labels=True).rows if r.kind == "pointwise"]
    print(f"solve accuracy {m['solve_accuracy']:.3f}; {len(judge)} pointwise judge prompts")
    out = engine.generate([r.prompt for r in judge], SamplingSpec(group_size=8, max_new_tokens=96, seed=a.seed + 1))
    cells: dict[tuple[str, str, str], list[int]] = collections.defaultdict(list)
    for r, samples in zip(judge, out):
        g = groups[r.source_prompt_id]
        cand = next(x for x in g if x.sample_index == r.source_sample_ids[0])
        truth = "right answer" if r.candidate_correct else "wrong answer"
        for s in samples:
            v = BOXED.findall(s.text)
            kind = check_kind(s.text, by_id[r.source_prompt_id], cand.extracted or "")
            cells[(truth, "yes_no" if r.label in ("Yes", "No") else "a_b", kind)].append(int(bool(v) and v[-1].strip() == r.label))
    total = sum(len(v) for v in cells.values())
    print(f"{'candidate':<13} {'wording':<8} {'trace check':<14} {'share':>6} {'reward':>7}")
    for (truth, wording, kind), v in sorted(cells.items()):
        print(f"{truth:<13} {wording:<8} {kind:<14} {len(v) / total:6.3f} {sum(v) / len(v):7.3f}")
    for wording in ("yes_no", "a_b"):  # the reward's information about the check, per wording
        rate = {ok: [x for (_, w, k), v in cells.items() if w == wording and k.endswith(ok) for x in v]
                for ok in ("-right", "-wrong")}
        if all(rate.values()):
            right, wrong = (sum(v) / len(v) for v in rate.values())
            print(f"{wording}: reward {right:.3f} when the check is computed right, {wrong:.3f} when not "
                  f"(gap {right - wrong:+.3f})")


if __name__ == "__main__":
    main()
