"""Recycling verified rollouts into judge and reflection prompts with known labels (SPARK.md).

Per verified group (one prompt, its G rollouts):

- all G correct -> one pointwise sample on a correct answer, label positive;
- all G wrong -> one pointwise sample on a wrong answer that has a parsable answer, label
  negative;
- mixed -> with probability `mixed_pointwise` (0.3) one pointwise sample on an answer drawn
  50/50 from the right and the wrong ones; otherwise one pairwise sample, one right and one
  wrong answer, the right one in slot A or B with probability 1/2, label = that letter;
- pointwise wording: Yes/No or A (correct) / B (incorrect), each with probability 1/2;
- reflection: one per group that has a wrong rollout, built from a wrong rollout only, showing
  its full chain of thought or only its answer with probability 1/2; label = the reference.

Nothing is dropped silently: every group or sample that yields nothing is counted under a
reason in `RecycleResult.dropped`. `select_batch` then takes at most B/2 judge and B/2
reflection rows, oldest first (the FIFO cache), and with `balance_labels` draws pointwise
rows so correct/incorrect candidates are balanced, with each label (Yes/No/A/B) and the
pairwise slots balanced exactly, a documented deviation from the authors' rules.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Sequence

from spark_core.judge.templates import candidate_text, pointwise_label, templates


@dataclass(frozen=True)
class Rollout:
    """One verified response to a prompt."""

    prompt_id: str
    question: str
    reference: str
    sample_index: int
    response: str
    extracted: str | None
    correct: bool


@dataclass(frozen=True)
class JudgeRow:
    """One recycled judge or reflection prompt (a row of the `judge_data` table)."""

    judge_id: str
    kind: str  # pointwise | pairwise | reflection
    source_prompt_id: str
    source_sample_ids: list[int]
    template_id: str
    judge_input: str  # answer | cot | both (reflection: answer | cot)
    prompt: str  # the user message
    label: str  # Yes/No/A/B, or the reference answer for reflection
    candidate_correct: bool | None = None  # pointwise: whether the shown answer is right
    iteration_consumed: int | None = None

    def to_row(self) -> dict:
        return asdict(self)


@dataclass
class RecycleResult:
    rows: list[JudgeRow] = field(default_factory=list)
    made: Counter = field(default_factory=Counter)  # per kind
    dropped: Counter = field(default_factory=Counter)  # per reason


def _judge_id(kind: str, prompt_id: str, samples: Iterable[int], salt: str) -> str:
    key = f"{kind}|{prompt_id}|{','.join(map(str, samples))}|{salt}"
    return f"{kind[:4]}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


class _Choices:
    """Pairwise slots and pointwise wordings: coin flips (the authors' rules), or with
    `balanced`, alternation (A, B, A, ... and per correctness class yes_no, a_b, ...), so the
    labels a run produces are balanced exactly."""

    def __init__(self, rng: random.Random, balanced: bool):
        self.rng, self.balanced = rng, balanced
        self.count: Counter = Counter()

    def _alternate(self, key: str, options: tuple[str, str]) -> str:
        if not self.balanced:
            return self.rng.choice(options)
        self.count[key] += 1
        return options[self.count[key] % 2]

    def slot(self) -> str:
        return self._alternate("slot", ("B", "A"))

    def wording(self, correct: bool) -> str:
        return self._alternate(f"wording-{correct}", ("a_b", "yes_no"))


def recycle_group(
    group: Sequence[Rollout],
    rng: random.Random,
    template_set: str = "compact",
    judge_input: str = "answer",
    mixed_pointwise: float = 0.3,
    salt: str = "",
    choices: _Choices | None = None,
) -> RecycleResult:
    """The judge and reflection rows of one verified group, and what it could not yield."""
    choices = choices or _Choices(rng, balanced=False)
    out = RecycleResult()
    if not group:
        out.dropped["empty group"] += 1
        return out
    first = group[0]
    right = [r for r in group if r.correct]
    wrong = [r for r in group if not r.correct]
    # A judge shown only answers needs a parsable one; a wrong rollout with no answer can still
    # be shown whole (cot/both).
    showable_wrong = [r for r in wrong if r.extracted is not None or judge_input != "answer"]

    def pointwise(r: Rollout) -> JudgeRow:
        wording = choices.wording(r.correct)
        tpl = rng.choice(templates(template_set, "pointwise", wording))
        cand = candidate_text(r.response, r.extracted, judge_input)
        return JudgeRow(
            _judge_id("pointwise", r.prompt_id, [r.sample_index], salt), "pointwise", r.prompt_id, [r.sample_index],
            tpl.id, judge_input, tpl.render(question=r.question, candidate=cand), pointwise_label(r.correct, wording), r.correct,
        )

    def pairwise(good: Rollout, bad: Rollout) -> JudgeRow:
        slot = choices.slot()
        a, b = (good, bad) if slot == "A" else (bad, good)
        tpl = rng.choice(templates(template_set, "pairwise"))
        text = tpl.render(
            question=good.question,
            a=candidate_text(a.response, a.extracted, judge_input),
            b=candidate_text(b.response, b.extracted, judge_input),
        )
        ids = [a.sample_index, b.sample_index]
        return JudgeRow(_judge_id("pairwise", good.prompt_id, ids, salt), "pairwise", good.prompt_id, ids, tpl.id, judge_input, text, slot)

    if not wrong:
        out.rows.append(pointwise(rng.choice(right)))
    elif not right:
        if showable_wrong:
            out.rows.append(pointwise(rng.choice(showable_wrong)))
        else:
            out.dropped["all wrong, none with a parsable answer"] += 1
    elif rng.random() < mixed_pointwise:
        pool = right if rng.random() < 0.5 or not showable_wrong else showable_wrong
        out.rows.append(pointwise(rng.choice(pool)))
    elif showable_wrong:
        out.rows.append(pairwise(rng.choice(right), rng.choice(showable_wrong)))
    else:
        out.dropped["mixed, no wrong answer to pair (none parsable)"] += 1

    if not wrong:
        out.dropped["reflection: no wrong rollout"] += 1
    else:
        r = rng.choice(wrong)
        show_cot = rng.random() < 0.5 or r.extracted is None
        if not show_cot or r.response.strip():
            shown = r.response if show_cot else r.extracted
            tpl = rng.choice(templates(template_set, "reflection"))
            out.rows.append(JudgeRow(
                _judge_id("reflection", r.prompt_id, [r.sample_index], salt), "reflection", r.prompt_id, [r.sample_index],
                tpl.id, "cot" if show_cot else "answer", tpl.render(question=r.question, response=shown), first.reference,
            ))
        else:
            out.dropped["reflection: wrong rollout is empty"] += 1
    for row in out.rows:
        out.made[row.kind] += 1
    return out


def recycle(
    groups: Iterable[Sequence[Rollout]],
    seed: int,
    template_set: str = "compact",
    judge_input: str = "answer",
    mixed_pointwise: float = 0.3,
    salt: str = "",
    balance_labels: bool = False,
) -> RecycleResult:
    """Recycle every group with one seeded generator: the same inputs and seed give the same rows.

    `balance_labels` alternates pairwise slots and pointwise wordings instead of flipping coins
    (see `_Choices`); which answers are shown still follows the authors' rules.
    """
    rng = random.Random(f"recycle|{seed}|{salt}")
    choices = _Choices(rng, balance_labels)
    total = RecycleResult()
    for group in groups:
        part = recycle_group(group, rng, template_set, judge_input, mixed_pointwise, salt, choices)
        total.rows += part.rows
        total.made.update(part.made)
        total.dropped.update(part.dropped)
    return total


def select_batch(cache: Sequence[JudgeRow], batch_prompts: int, balance_labels: bool) -> list[JudgeRow]:
    """Rows for one reward period: at most B/2 judge and B/2 reflection rows, oldest first.

    `cache` holds the unconsumed rows in FIFO order (oldest first). With `balance_labels`,
    pointwise rows are taken with as many correct as incorrect candidates and pairwise rows
    with as many A as B labels (the rest wait in the cache); Yes/No versus A/B wording is
    already balanced within each class by `recycle(balance_labels=True)`.
    """
    half = batch_prompts // 2
    judge = [r for r in cache if r.kind != "reflection"]
    reflection = [r for r in cache if r.kind == "reflection"][:half]
    if not balance_labels:
        return judge[:half] + reflection
    pos = [r for r in judge if r.kind == "pointwise" and r.candidate_correct]
    neg = [r for r in judge if r.kind == "pointwise" and not r.candidate_correct]
    slot_a = [r for r in judge if r.kind == "pairwise" and r.label == "A"]
    slot_b = [r for r in judge if r.kind == "pairwise" and r.label == "B"]
    points, pairs = min(len(pos), len(neg)), min(len(slot_a), len(slot_b))
    m = min(points, half // 4)  # pointwise per class: a fair share first ...
    k = min(pairs, (half - 2 * m) // 2)  # ... pairwise per slot with the rest ...
    m = min(points, (half - 2 * k) // 2)  # ... and pointwise again if pairs ran short
    chosen = {id(r) for r in pos[:m] + neg[:m] + slot_a[:k] + slot_b[:k]}
    return [r for r in judge if id(r) in chosen] + reflection


# --------------------------------------------------------------------------- the FIFO cache in `judge_data`

CACHE_PART = "recycle"


def write_cache(run_dir, iteration: int, rows: Sequence[JudgeRow]):
    """Add one iteration's recycled rows to the `judge_data` table (partition = iteration made)."""
    from spark_core.data.store import write_table

    return write_table(run_dir, "judge_data", [r.to_row() for r in rows], iteration=iteration, part=CACHE_PART)


def take_from_cache(run_dir, iteration: int, batch_prompts: int, balance_labels: bool) -> list[JudgeRow]:
    """The reward period's rows for `iteration`, oldest first, marked consumed in the table.

    Rows still unconsumed, or consumed by this same iteration (a re-run after a crash), are
    available, so re-running the stage selects the same rows and marks nothing twice. Each
    changed partition is rewritten atomically.
    """
    import pyarrow.parquet as pq

    from spark_core.data.store import part_path, write_table

    available: list[JudgeRow] = []
    partitions: dict[int, list[dict]] = {}
    for made in range(iteration + 1):
        path = part_path(run_dir, "judge_data", made, CACHE_PART)
        if not path.is_file():
            continue
        rows = pq.read_table(path).to_pylist()
        partitions[made] = rows
        available += [JudgeRow(**r) for r in rows if r["iteration_consumed"] in (None, iteration)]
    chosen = select_batch(available, batch_prompts, balance_labels)
    ids = {r.judge_id for r in chosen}
    for made, rows in partitions.items():
        changed = False
        for r in rows:
            want = iteration if r["judge_id"] in ids else (None if r["iteration_consumed"] == iteration else r["iteration_consumed"])
            if r["iteration_consumed"] != want:
                r["iteration_consumed"], changed = want, True
        if changed:
            write_table(run_dir, "judge_data", rows, iteration=made, part=CACHE_PART)
    return [replace(r, iteration_consumed=iteration) for r in chosen]


def consumed_batch(run_dir, iteration: int) -> list[JudgeRow]:
    """The rows `take_from_cache` took for `iteration`, in the same order (judge rows oldest
    first, then reflection rows oldest first), read back from `judge_data`."""
    import pyarrow.parquet as pq

    from spark_core.data.store import part_path

    rows: list[JudgeRow] = []
    for made in range(iteration + 1):
        path = part_path(run_dir, "judge_data", made, CACHE_PART)
        if path.is_file():
            rows += [JudgeRow(**r) for r in pq.read_table(path).to_pylist() if r["iteration_consumed"] == iteration]
    return [r for r in rows if r.kind != "reflection"] + [r for r in rows if r.kind == "reflection"]
