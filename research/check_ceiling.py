"""How good can a judge that trusts its own check be? The forward re-solve against an inverse check.

A judge that recomputes the answer the way the solver does inherits the solver's systematic
errors: when a second, independent sample of the same question repeats a wrong answer, the
judge's recomputation does too and the comparison says "equal". This measures, without any
training, the ceiling of two checks on the model's *own* answers (T=1, held-out problems):

- forward: sample the question again (G fresh samples) and compare with the candidate;
- inverse: for `a+b` with candidate c, ask the model to solve `c-b` and compare with `a`; for
  `a-b`, solve `c+b` (the error in c and the error in the inverse computation are different
  computations, so they should not coincide; but c can have 3 digits or a sign, which the
  tiny model never saw as an operand).

Per check: the share of passes on correct candidates (true pass) and on wrong ones (false
pass), and the balanced accuracy of a judge that follows the check exactly:
(true pass + 1 - false pass) / 2. Synthetic one-step problems only.

Run: `.venv/bin/python research/check_ceiling.py [--checkpoint data/tiny-model] [--problems 200]`
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_core.model.bootstrap import ONE_STEP, inverse_check  # noqa: E402
from spark_core.model.checkpoint import load_checkpoint  # noqa: E402
from spark_core.config import load_config  # noqa: E402
from spark_core.data.problems import generate_problems  # noqa: E402
from spark_core.model.rollout import HFEngine, SamplingSpec  # noqa: E402
from spark_core.verify import extract_answer  # noqa: E402

def answers(engine, questions: list[str], g: int, seed: int) -> list[list[str | None]]:
    """G sampled answers per question (extracted; None when none could be read)."""
    groups = engine.generate(questions, SamplingSpec(g, 1.0, 1.0, 48, seed=seed))
    return [[extract_answer(s.text).answer for s in grp] for grp in groups]


def ceilings(engine, probs, samples: int) -> dict[str, dict[str, float]]:
    """Per check: true pass, false pass and the balanced ceiling on the model's own answers."""
    cands = answers(engine, [p.question for p in probs], samples, seed=1)
    items = [(p, c) for p, cs in zip(probs, cands) for c in cs if c is not None and re.fullmatch(r"-?\d+", c)]
    forward = answers(engine, [p.question for p, _ in items], samples, seed=2)
    inverse_q, _, inverse_target = zip(*(inverse_check(p, c) for p, c in items))
    inverse = answers(engine, list(inverse_q), samples, seed=3)
    out = {"candidates": {"n": len(items), "correct": sum(c == p.answer for p, c in items)}}
    for name, checks, target in (("forward", forward, [c for _, c in items]), ("inverse", inverse, inverse_target)):
        passes = {True: [], False: []}
        for (p, c), got, want in zip(items, checks, target):
            passes[c == p.answer].extend(g == want for g in got)
        tp = sum(passes[True]) / max(1, len(passes[True]))
        fp = sum(passes[False]) / max(1, len(passes[False]))
        out[name] = {"true_pass": tp, "false_pass": fp, "ceiling": (tp + 1 - fp) / 2}
    return out


def held_out_one_step(problems: int) -> list:
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    _, held = generate_problems(cfg.problems, cfg.seed)
    return [p for p in held if ONE_STEP.fullmatch(p.question)][:problems]


def print_ceilings(name: str, r: dict) -> None:
    c = r["candidates"]
    print(f"{name}: {c['n']} own candidates ({c['correct']} correct)")
    for check in ("forward", "inverse"):
        x = r[check]
        print(f"  {check:8} true pass {x['true_pass']:.3f}  false pass {x['false_pass']:.3f}  "
              f"judge ceiling (balanced) {x['ceiling']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "data" / "tiny-model"))
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--samples", type=int, default=4, help="candidates per problem, and re-solves per candidate")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_checkpoint(a.checkpoint)
    engine = HFEngine(model, tok, device="cpu")
    print_ceilings(f"{a.checkpoint}, {a.problems} held-out problems, {a.samples} checks each",
                   ceilings(engine, held_out_one_step(a.problems), a.samples))


if __name__ == "__main__":
    main()
