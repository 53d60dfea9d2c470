"""The format warm-up: bring a base model to the answer format before RL (a cold start).

A pretrained instruct model asked to box its answer often does not (`3 + 54 equals 57.`),
and asked to judge, answers a bare `No`. GRPO's verifier then scores right answers and
right verdicts 0, and the judge's accuracy reads as a format failure. Real pipelines start
RL from a supervised cold start; this one teaches the *format only*, from the model's own
samples (rejection sampling), and never a verdict from a label:

1. sample `samples` answers to `problems` training problems (the configured solve prompt);
2. solve examples: answers that are correct (by any extraction rule) and finished on an end
   token, rewritten so they end in `\\boxed{answer}` when they did not (the model's own
   reasoning and its own answer, in the format); one per prompt, at random or the shortest;
3. judge examples: the answers are recycled by the real rules into judge prompts, the model
   samples responses to `judge_prompts` of them, and each prompt contributes one response
   whose verdict can be read leniently (a box, else the last `Yes`/`No`, `A`/`B` it states),
   rewritten to end in that *same* verdict boxed. Which verdict does not depend on the label,
   so the pass cannot teach judging, only where the verdict goes (`balance_verdicts`: among
   its own verdicts, the one trained least so far, so that it does not learn one verdict for
   all). Reflection prompts are treated like solve prompts (correct answers, boxed);
4. `epochs` passes of token-mean negative log-likelihood (AdamW at `lr`; state not kept);
5. the parse rates again, on the same prompts with a new seed.

The strict parse rates (a `\\boxed{}` answer; a boxed verdict) before and after go to the
stage manifest (`warmup/...` in MLflow), the examples to `RUN/warmup/examples.parquet`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from spark_core.evaluation.evaluate import verdict_of, verified_group
from spark_core.periods import Task, solve_tasks
from spark_core.data.problems import Problem
from spark_core.judge.recycle import recycle
from spark_core.model.rollout import Sample
from spark_core.judge.templates import verdict_options
from spark_core.model.trainer import Sequence_
from spark_core.verify import extract_answer, verify_response

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
# A letter verdict: named ("Student B", "option (A)"), bracketed ("(A)", "[B]", "**A**"), or a line
# of its own ("B."); a sentence starting with the article "A" is none of these.
_A_B = re.compile(r"(?i:answer|option|candidate|response|student|attempt|choice)\s*\(?([AB])\b"
                  r"|[(\[]([AB])[)\]]|\*\*([AB])\*\*|(?:^|\n)\s*([AB])\s*[.)]?\s*(?=$|\n)")


@dataclass(frozen=True)
class Example:
    """One warm-up example: the prompt, the response as sampled, and as trained on."""

    kind: str  # solve | pointwise | pairwise | reflection
    prompt_id: str
    prompt: str
    sampled: str
    target: str
    rewritten: bool


def lenient_verdict(text: str, label: str) -> str | None:
    """The verdict a judge response states in any common form, among the options of `label`'s
    kind (Yes/No or A/B): its last box if that is an option, else the last option it names."""
    options = verdict_options(label)
    boxed = verdict_of(text)
    if boxed is not None:
        return next((o for o in options if o.casefold() == boxed), None)
    if options[0] == "Yes":
        found = _YES_NO.findall(text)
    else:
        found = [next(g for g in m.groups() if g) for m in _A_B.finditer(text)]
    if not found:
        return None
    last = found[-1]
    return next(o for o in options if o.casefold() == last.casefold())


def boxed_text(response: str, answer: str) -> str:
    """The response ending in `\\boxed{answer}`: unchanged when its last answer is already boxed."""
    if extract_answer(response).rule == "boxed":
        return response
    return f"{response.rstrip()}\nThe final answer is \\boxed{{{answer}}}."


def strict_parsed(task: Task, text: str) -> bool:
    """Whether a response is in the format the verifier scores: a boxed answer (solve,
    reflection) or a boxed verdict that is one of the prompt's options (judge)."""
    if task.kind in ("solve", "reflection"):
        return extract_answer(text).rule == "boxed"
    v = verdict_of(text)
    return v is not None and v in {o.casefold() for o in verdict_options(task.label)}


def solve_examples(tasks: Sequence[Task], groups: Sequence[Sequence[Sample]], rng: random.Random,
                   shortest: bool = False, max_tokens: int | None = None) -> list[Example]:
    """At most one example per prompt: a correct, finished answer, boxed (rejection sampling);
    `shortest` (`warmup.shortest_answers`): the one with the fewest tokens (ties: at random);
    `max_tokens` (`warmup.answer_budget`): only answers of at most that many tokens."""
    out = []
    for t, g in zip(tasks, groups):
        ok = []
        for s in g:
            if max_tokens is not None and len(s.token_ids) > max_tokens:
                continue
            v = verify_response(s.text, t.label)
            if v.correct and s.finish_reason == "stop" and v.extracted is not None:
                ok.append((s, v.extracted))
        if ok and shortest:
            fewest = min(len(s.token_ids) for s, _ in ok)
            ok = [(s, a) for s, a in ok if len(s.token_ids) == fewest]
        if ok:
            s, ans = rng.choice(ok)
            target = boxed_text(s.text, ans)
            out.append(Example(t.kind, t.prompt_id, t.prompt, s.text, target, target != s.text))
    return out


def judge_examples(tasks: Sequence[Task], groups: Sequence[Sequence[Sample]], rng: random.Random,
                   balance: bool = False, max_tokens: int | None = None) -> list[Example]:
    """At most one example per judge prompt: a finished response whose own verdict is readable,
    ending in that verdict boxed (the label is only used to know the options).

    `balance` (`warmup.balance_verdicts`): the prompts are visited in a random order and each
    takes, where its responses offer one, a verdict trained on least so far. Still only the
    model's own verdicts and never the label; without it the pass trains the model's usual
    verdict on every prompt and leaves it giving that one verdict always, and a GRPO group whose
    responses all agree has no advantage to learn from. `max_tokens` (`warmup.answer_budget`):
    only responses of at most that many tokens."""
    readable = []
    for t, g in zip(tasks, groups):
        ok = [(s, lenient_verdict(s.text, t.label)) for s in g if s.finish_reason == "stop"
              and (max_tokens is None or len(s.token_ids) <= max_tokens)]
        readable.append([(s, v) for s, v in ok if v is not None])
    given = Counter(v for ok in readable for _, v in ok)  # ties go to the verdict the model gives least
    chosen: dict[int, Example] = {}
    counts: Counter[str] = Counter()
    order = list(range(len(tasks)))
    if balance:
        rng.shuffle(order)
    for i in order:
        t, ok = tasks[i], readable[i]
        if not ok:
            continue
        if balance:
            least = min((counts[v], given[v]) for _, v in ok)
            ok = [(s, v) for s, v in ok if (counts[v], given[v]) == least]
        s, v = rng.choice(ok)
        counts[v] += 1
        target = boxed_text(s.text, v) if verdict_of(s.text) is None else s.text
        chosen[i] = Example(t.kind, t.prompt_id, t.prompt, s.text, target, target != s.text)
    return [chosen[i] for i in sorted(chosen)]


def verdict_shares(tasks: Sequence[Task], texts: Sequence[Sequence[str]]) -> dict[str, float]:
    """Share of `Yes` among the boxed pointwise verdicts and of `A` among the pairwise ones
    (`pointwise_share_yes`, `pairwise_share_a`; a kind without a boxed verdict is left out)."""
    m: dict[str, float] = {}
    for name, kind, first in (("pointwise_share_yes", "pointwise", "yes"), ("pairwise_share_a", "pairwise", "a")):
        got = [verdict_of(x) for t, g in zip(tasks, texts) if t.kind == kind for x in g]
        got = [v for v in got if v is not None]
        if got:
            m[name] = sum(v == first for v in got) / len(got)
    return m


def recycled_judge_tasks(tasks: Sequence[Task], groups: Sequence[Sequence[Sample]], n: int, seed: int,
                         template_set: str, judge_input: str) -> list[Task]:
    """Judge and reflection prompts recycled (real rules) from verified solve samples, about
    two judge prompts to one reflection prompt, at most `n`."""
    verified = [verified_group(t.prompt_id, t.question, t.label, g) for t, g in zip(tasks, groups)]
    made = recycle(verified, seed, template_set, judge_input, salt="warmup", balance_labels=True).rows
    judge = [r for r in made if r.kind != "reflection"]
    reflect = [r for r in made if r.kind == "reflection"]
    n_reflect = min(len(reflect), n // 3)
    rows = judge[: n - n_reflect] + reflect[:n_reflect]
    rows += reflect[n_reflect : n_reflect + n - len(rows)]
    return [Task(r.judge_id, r.kind, r.prompt, r.label) for r in rows]


def parse_rates(tasks: Sequence[Task], groups: Sequence[Sequence[Sample]]) -> dict[str, float]:
    """Strict parse rates per kind group: `solve_boxed`, `judge_parsed`, `reflection_boxed`."""
    m: dict[str, float] = {}
    for name, kinds in (("solve_boxed", ("solve",)), ("judge_parsed", ("pointwise", "pairwise")),
                        ("reflection_boxed", ("reflection",))):
        flags = [strict_parsed(t, s.text) for t, g in zip(tasks, groups) if t.kind in kinds for s in g]
        if flags:
            m[name] = sum(flags) / len(flags)
    return m


def warmup_problems(train: Sequence[Problem], n: int, seed: int) -> list[Problem]:
    return random.Random(f"{seed}|warmup").sample(list(train), min(n, len(train)))


def training_sequences(examples: Sequence[Example], encode, tokenizer, eos_id: int) -> list[Sequence_]:
    """The examples as trainer sequences: the chat-template prompt ids, the target's ids + end token."""
    prompt_ids = encode([e.prompt for e in examples])
    return [Sequence_(p, tokenizer(e.target, add_special_tokens=False)["input_ids"] + [eos_id], [], 0.0)
            for p, e in zip(prompt_ids, examples)]


__all__ = ["Example", "boxed_text", "judge_examples", "lenient_verdict", "parse_rates", "recycled_judge_tasks",
           "solve_examples", "solve_tasks", "strict_parsed", "training_sequences", "verdict_shares", "warmup_problems"]
