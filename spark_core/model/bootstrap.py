"""`spark bootstrap`: build the tiny warm-start model from scratch on the CPU.

There is no model hub here, so the default run trains its own: a byte-level tokenizer and a
small Llama (spark_core/model/checkpoint.py), taught by supervised fine-tuning to

- **solve**: `12+34` -> `12+34=46. \\boxed{46}` (the problems' worked solutions);
- **judge**, pointwise and pairwise (compact templates), with a *reason-then-verdict* trace:
  re-solve, then compare the candidate with the result digit by digit, then the verdict::

      Check: 12+34=47. Yes or No?  ->  12+34=46. 46 vs 47: 4=4 6#7. \\boxed{No}
      12+34=? A: 47 B: 46. Which is correct?
          ->  12+34=46. A 47: 4=4 6#7 N. B 46: 4=4 6=6 Y. \\boxed{B}

  A prototype (0.87M parameters) could not learn a bare verdict, nor "46 vs 47" without the
  digit-by-digit comparison, but learned this format to 99.75% held-out judge accuracy in 10
  minutes on one CPU thread with true labels (docs/research/judge-format.md).
- **reflect**: shown a wrong answer, solve again.

The default checkpoint learns the judge *format* with **random verdicts** (`judge_labels:
random`): the traces are right but the verdict is a coin flip, so it answers judge prompts
parsably and judges at chance, the state the paper starts from, leaving the
comparison-to-verdict step for RL to learn. Solve training stops once held-out solve
accuracy when sampling at temperature 1 reaches `target_solve_accuracy`, so a group of 8 has
both right and wrong answers for GRPO.

`--capacity-check` then continues from the checkpoint with *true* labels until balanced
held-out judge accuracy reaches `capacity_target`, proving the model can learn to judge;
those weights are thrown away.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spark_core.model.checkpoint import (
    build_model,
    build_tokenizer,
    chat_prompt,
    save_checkpoint,
)
from spark_core.config import BootstrapConfig, SparkConfig
from spark_core.data.problems import Problem, generate_problems
from spark_core.judge.recycle import Rollout
from spark_core.model.rollout import HFEngine, SamplingSpec
from spark_core.judge.templates import pointwise_label, templates
from spark_core.verify import LABELS, extract_answer, normalize_label, verify_response

log = logging.getLogger(__name__)

KINDS = ("solve", "pointwise", "pairwise", "reflection")


# --------------------------------------------------------------------------- worked traces


def near_miss(answer: int, rng: random.Random) -> int:
    """A plausible wrong answer: off by a little in the units or tens, digits swapped, or random."""
    while True:
        k = rng.random()
        if k < 0.35:
            c = answer + rng.choice([-3, -2, -1, 1, 2, 3])
        elif k < 0.6:
            c = answer + rng.choice([-20, -10, 10, 20])
        elif k < 0.75:
            s = str(abs(answer))
            c = int(s[::-1]) * (1 if answer >= 0 else -1) if len(s) > 1 else answer + 1
        elif k < 0.85:
            c = answer + rng.choice([-11, 11, -9, 9])
        else:
            c = rng.randint(min(0, answer) - 10, max(99, answer + 10))
        if c != answer:
            return c


def near_miss_rollouts(problems: list[Problem], rng: random.Random, group_size: int = 8,
                       p_right: float = 0.5) -> list[list[Rollout]]:
    """Made-up verified rollout groups in the solver's format: each answer right with
    probability `p_right`, otherwise a near miss.

    Judge data whose wrong answers are *not* the judge's own: the tiny model's own errors are
    systematic and its re-solve repeats them, so a self-check of its own answers tops out near
    0.73 (research/check_ceiling.py), while against near misses its trace is informative.
    """
    groups = []
    for p in problems:
        answers = [p.answer if rng.random() < p_right else str(near_miss(int(p.answer), rng)) for _ in range(group_size)]
        groups.append([Rollout(p.id, p.question, p.answer, i, f"{p.question}={a}. \\boxed{{{a}}}", a, a == p.answer)
                       for i, a in enumerate(answers)])
    return groups


def compare_digits(result: str, candidate: str) -> str:
    """Right-aligned character comparison: `46`, `47` -> `4=4 6#7`; `5`, `15` -> `_#1 5=5`."""
    width = max(len(result), len(candidate))
    r, c = result.rjust(width, "_"), candidate.rjust(width, "_")
    return " ".join(f"{x}={y}" if x == y else f"{x}#{y}" for x, y in zip(r, c))


def _steps(p: Problem) -> str:
    """The worked steps of a solution without its box: `12+34=46.`"""
    return p.solution[: p.solution.rindex("\\boxed{")].strip()


ONE_STEP = re.compile(r"(\d+)([+-])(\d+)")


def inverse_check(p: Problem, candidate: str) -> tuple[str, str, str] | None:
    """The inverse of a one-step problem with a candidate c: `a+b` -> (`c-b`, its value, `a`),
    `a-b` -> (`c+b`, its value, `a`). None for other problems or a non-integer candidate.

    Checking c by computing c-b and comparing with a makes the judge's errors differ from the
    solver's (research/check_ceiling.py: false pass 1-3% against 29-38% for a re-solve)."""
    m = ONE_STEP.fullmatch(p.question)
    if m is None or not re.fullmatch(r"-?\d+", candidate):
        return None
    x, op, y = m.groups()
    c = int(candidate)
    q, v = (f"{c}-{y}", c - int(y)) if op == "+" else (f"{c}+{y}", c + int(y))
    return q, str(v), x


def inverse_problem(p: Problem, rng: random.Random) -> Problem:
    """A solve problem of the inverse form a judge computes: `c-b` for `a+b` (`c+b` for `a-b`),
    c the right answer or, half the time, a near miss."""
    c = p.answer if rng.random() < 0.5 else str(near_miss(int(p.answer), rng))
    q, v, _ = inverse_check(p, c)
    return Problem(f"inverse-{q}", q, v, f"{q}={v}. \\boxed{{{v}}}", "synthetic-inverse")


def pointwise_trace(p: Problem, candidate: str, verdict: str, check: str = "forward") -> str:
    """`forward`: re-solve, compare with the candidate; `inverse`: compute the inverse, compare with a."""
    inv = inverse_check(p, candidate) if check == "inverse" else None
    if inv is not None:
        q, v, x = inv
        return f"{q}={v}. {v} vs {x}: {compare_digits(v, x)}. \\boxed{{{verdict}}}"
    return f"{_steps(p)} {p.answer} vs {candidate}: {compare_digits(p.answer, candidate)}. \\boxed{{{verdict}}}"


def pairwise_trace(p: Problem, a: str, b: str, verdict: str, check: str = "forward") -> str:
    marks = {x: "Y" if x == p.answer else "N" for x in (a, b)}
    inv = {x: inverse_check(p, x) for x in (a, b)} if check == "inverse" else {}
    if inv and all(inv.values()):
        (qa, va, x), (qb, vb, _) = inv[a], inv[b]
        return (f"A {qa}={va}: {compare_digits(va, x)} {marks[a]}. "
                f"B {qb}={vb}: {compare_digits(vb, x)} {marks[b]}. \\boxed{{{verdict}}}")
    return (
        f"{_steps(p)} A {a}: {compare_digits(p.answer, a)} {marks[a]}. "
        f"B {b}: {compare_digits(p.answer, b)} {marks[b]}. \\boxed{{{verdict}}}"
    )


@dataclass(frozen=True)
class Example:
    kind: str
    prompt: str  # the user message
    response: str  # the target response
    label: str | None  # the true verdict / answer (None for solve)


def _shown_verdict(label: str, true_labels: bool | float, rng: random.Random, options: tuple[str, str],
                   pairwise: bool) -> str:
    """The verdict an SFT trace ends with: the true one (True), a coin flip (False, the default
    bootstrap: a judge with no skill), or the true one with probability p (a float: a weak judge).
    The coin flips draw from `rng` exactly as the shipped model's bootstrap did."""
    if true_labels is True:
        return label
    if true_labels is False:
        return rng.choice("AB") if pairwise else (options[0] if rng.random() < 0.5 else options[1])
    return label if rng.random() < float(true_labels) else next(o for o in options if o != label)


def make_example(kind: str, p: Problem, rng: random.Random, true_labels: bool | float, correct: bool | None = None,
                 wording: str | None = None, slot: str | None = None, check: str = "forward") -> Example:
    """One supervised example of `kind` on problem `p`; verdicts random unless `true_labels`.

    With `check="inverse"` judge traces check by the inverse computation, and half the solve
    examples of one-step problems are their inverse forms, so the judge's arithmetic is taught."""
    answer = int(p.answer)
    if kind == "solve":
        if check == "inverse" and ONE_STEP.fullmatch(p.question) and rng.random() < 0.5:
            p = inverse_problem(p, rng)
        return Example(kind, p.question, p.solution, p.answer)
    if kind == "pointwise":
        correct = rng.random() < 0.5 if correct is None else correct
        cand = p.answer if correct else str(near_miss(answer, rng))
        tpl = rng.choice(templates("compact", "pointwise", wording))
        label = pointwise_label(correct, tpl.wording)
        shown = _shown_verdict(label, true_labels, rng, (pointwise_label(True, tpl.wording), pointwise_label(False, tpl.wording)), False)
        return Example(kind, tpl.render(question=p.question, candidate=cand), pointwise_trace(p, cand, shown, check), label)
    if kind == "pairwise":
        slot = rng.choice("AB") if slot is None else slot
        wrong = str(near_miss(answer, rng))
        a, b = (p.answer, wrong) if slot == "A" else (wrong, p.answer)
        tpl = rng.choice(templates("compact", "pairwise"))
        shown = _shown_verdict(slot, true_labels, rng, ("A", "B"), True)
        return Example(kind, tpl.render(question=p.question, a=a, b=b), pairwise_trace(p, a, b, shown, check), slot)
    if kind == "reflection":
        wrong = str(near_miss(answer, rng))
        shown = wrong if rng.random() < 0.5 else f"{_steps(p).rsplit('=', 1)[0]}={wrong}. \\boxed{{{wrong}}}"
        tpl = rng.choice(templates("compact", "reflection"))
        return Example(kind, tpl.render(question=p.question, response=shown), p.solution, p.answer)
    raise ValueError(f"unknown kind {kind!r}")


# --------------------------------------------------------------------------- training


def _batch(tok, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, labels, mask), right-padded (B, T); loss only on the response and its EOS."""
    seqs = []
    for ex in examples:
        p = tok(chat_prompt(tok, ex.prompt), add_special_tokens=False)["input_ids"]
        r = tok(ex.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append((p + r, [-100] * len(p) + r))
    width = max(len(s[0]) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (x, y) in enumerate(seqs):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, labels, mask


def train_sft(model, tok, problems: list[Problem], s: BootstrapConfig, rng: random.Random, true_labels: bool,
              stop, mix=None, decay_seconds: float | None = None) -> tuple[int, float]:
    """Supervised steps until `stop(step, seconds)` says so; returns (steps, seconds).

    Learning rate: linear warm-up, then constant, or with `decay_seconds` a cosine decay to
    10% over that much wall-clock time (the capacity check: its end is a time budget).
    """
    mix = mix or s.mix
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    device = next(model.parameters()).device  # CPU here; a GPU when the caller put the model there
    start, step = time.monotonic(), 0
    while True:
        seconds = time.monotonic() - start
        if stop(step, seconds):
            return step, seconds
        scale = min(1.0, (step + 1) / s.warmup_steps)
        if decay_seconds:
            scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, seconds / decay_seconds)))
        for g in opt.param_groups:
            g["lr"] = s.lr * scale
        kinds = rng.choices(KINDS, weights=mix, k=s.batch_size)
        ids, labels, mask = _batch(tok, [make_example(k, rng.choice(problems), rng, true_labels, check=s.judge_check)
                                         for k in kinds])
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            log.info("step %d  %.0fs  loss %.4f", step, seconds, loss.item())


# --------------------------------------------------------------------------- measuring


def solve_accuracy(engine: HFEngine, problems: list[Problem], temperature: float, samples: int, seed: int) -> float:
    """Mean accuracy of `samples` responses per problem at `temperature`."""
    spec = SamplingSpec(group_size=samples, temperature=temperature, max_new_tokens=48, seed=seed)
    groups = engine.generate([p.question for p in problems], spec)
    right = [verify_response(s.text, p.answer).correct for p, g in zip(problems, groups) for s in g]
    return sum(bool(r) for r in right) / len(right)


def judge_set(problems: list[Problem], seed: int) -> list[Example]:
    """A balanced labelled judge set: per problem one pointwise (correct and wrong alternate,
    Yes/No and A/B alternate) and one pairwise (correct answer in A and B alternately)."""
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(problems):
        out.append(make_example("pointwise", p, rng, True, correct=i % 2 == 0, wording=("yes_no", "a_b")[(i // 2) % 2]))
        out.append(make_example("pairwise", p, rng, True, slot="AB"[i % 2]))
    return out


def judge_metrics(engine: HFEngine, examples: list[Example]) -> dict:
    """Greedy verdicts: accuracy (overall and per kind), parse rate, share of each verdict."""
    spec = SamplingSpec(group_size=1, temperature=0.0, max_new_tokens=96, seed=0)
    groups = engine.generate([ex.prompt for ex in examples], spec)
    labels = {normalize_label(x) for x in LABELS}
    right, parsed, shares = {"pointwise": [], "pairwise": []}, 0, {}
    for ex, g in zip(examples, groups):
        found = extract_answer(g[0].text, "boxed").answer
        verdict = normalize_label(found) if found is not None else None
        parsed += verdict in labels
        shares[verdict] = shares.get(verdict, 0) + 1
        right[ex.kind].append(verdict == normalize_label(ex.label))
    allr = right["pointwise"] + right["pairwise"]
    return {
        "judge_accuracy": sum(allr) / len(allr),
        "judge_pointwise_accuracy": sum(right["pointwise"]) / len(right["pointwise"]),
        "judge_pairwise_accuracy": sum(right["pairwise"]) / len(right["pairwise"]),
        "judge_parse_rate": parsed / len(examples),
        "judge_verdict_shares": {str(k): v / len(examples) for k, v in sorted(shares.items(), key=str)},
    }


# --------------------------------------------------------------------------- the command


def bootstrap(cfg: SparkConfig, out: Path, capacity_check: bool = False) -> dict:
    """Build, train and save the tiny model to `out`; returns the metrics written to metrics.json."""
    s = cfg.bootstrap
    if s.threads:
        torch.set_num_threads(s.threads)
    start = time.monotonic()
    rng = random.Random(cfg.seed)
    train, held = generate_problems(cfg.problems, cfg.seed)
    held_eval = held[: s.eval_problems]
    tok = build_tokenizer()
    model = build_model(tok, s.model, cfg.seed)
    engine = HFEngine(model, tok, device="cpu")
    history = []

    def stop(step: int, seconds: float) -> bool:
        if seconds > s.max_minutes * 60:
            log.warning("bootstrap: time limit reached at step %d", step)
            return True
        if step < s.min_steps or step % s.eval_every:
            return False
        acc = solve_accuracy(engine, held_eval, 1.0, 2, cfg.seed + step)
        history.append({"step": step, "seconds": round(seconds, 1), "solve_accuracy_t1": acc})
        log.info("bootstrap: step %d, %.0fs, held-out solve accuracy at T=1: %.3f", step, seconds, acc)
        model.train()
        return acc >= s.target_solve_accuracy

    steps, train_seconds = train_sft(model, tok, train, s, rng, true_labels=False, stop=stop)
    model.eval()
    metrics = {
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "solve_accuracy": solve_accuracy(engine, held_eval, 1.0, 4, cfg.seed + 1),
        "solve_accuracy_greedy": solve_accuracy(engine, held_eval, 0.0, 1, cfg.seed),
        **judge_metrics(engine, judge_set(held_eval, cfg.seed + 2)),
        "history": history,
    }
    out = Path(out)
    final, out = out, out.with_name(out.name + ".tmp")  # the checkpoint appears complete or not at all
    shutil.rmtree(out, ignore_errors=True)
    save_checkpoint(model, tok, out)
    metrics["seconds"] = round(time.monotonic() - start, 1)
    if capacity_check:
        # Trains the in-memory model further; the checkpoint on disk was saved above, so the
        # check's weights are thrown away with this process.
        metrics.update(capacity(model, tok, train, held_eval, s, cfg.seed))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    # What built this checkpoint: a test checks the shipped one against the current config.
    (out / "bootstrap.json").write_text(json.dumps({"seed": cfg.seed, "problems": cfg.problems.model_dump(mode="json"),
                                                    "bootstrap": s.model_dump(mode="json")}, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    return metrics


def capacity(model, tok, train: list[Problem], held: list[Problem], s: BootstrapConfig, seed: int) -> dict:
    """Supervised training on true judge labels until balanced held-out accuracy >= target."""
    engine = HFEngine(model, tok, device="cpu")
    rng = random.Random(seed + 7)
    examples = judge_set(held, seed + 3)
    reached: dict = {}

    def stop(step: int, seconds: float) -> bool:
        if seconds > s.capacity_max_minutes * 60:
            return True
        if step == 0 or step % s.eval_every:
            return False
        reached.update(judge_metrics(engine, examples))
        log.info("capacity: step %d, %.0fs, judge accuracy %.3f", step, seconds, reached["judge_accuracy"])
        model.train()
        return reached["judge_accuracy"] >= s.capacity_target

    # Mostly judging, some solving so the traces' arithmetic does not decay.
    steps, seconds = train_sft(model, tok, train, s, rng, true_labels=True, stop=stop, mix=(0.2, 0.35, 0.35, 0.1),
                               decay_seconds=s.capacity_max_minutes * 60)
    return {
        "capacity_judge_accuracy": reached.get("judge_accuracy", 0.0),
        "capacity_judge_pointwise_accuracy": reached.get("judge_pointwise_accuracy"),
        "capacity_judge_pairwise_accuracy": reached.get("judge_pairwise_accuracy"),
        "capacity_seconds": round(seconds, 1),
        "capacity_steps": steps,
    }
