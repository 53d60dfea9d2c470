"""Problem sources: a seeded arithmetic generator and loaders for JSONL/Parquet problem sets.

Every problem has an id, a question, a reference answer, optionally a worked solution, and
the name of its source. The train/held-out split is decided by a hash of the normalized
question alone, so a question is on the same side whatever the seed, the order or the
other problems, and duplicates can never straddle the split.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from spark_core.config import ProblemsConfig, SyntheticConfig
from spark_core.data.records import InputError, read_records
from spark_core.verify import extract_reference, number_text


@dataclass(frozen=True)
class Problem:
    """One verifiable problem."""

    id: str
    question: str
    answer: str
    solution: str | None = None
    source: str = ""

    def to_row(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- synthetic arithmetic

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _operand(rng: random.Random, cfg: SyntheticConfig) -> int:
    digits = rng.randint(cfg.min_digits, cfg.max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def make_arithmetic(rng: random.Random, cfg: SyntheticConfig) -> Problem:
    """One problem, evaluated left to right, with a worked solution of one line per step.

    Parentheses are written where left-to-right and the usual precedence differ, so the
    question means what the solution computes:

    >>> p = make_arithmetic(random.Random(3), SyntheticConfig(steps=2, operators="+*"))
    >>> p.question, p.solution, p.answer
    ('(9+87)*9', '9+87=96. 96*9=864. \\\\boxed{864}', '864')
    """
    value = _operand(rng, cfg)
    expr, has_additive = str(value), False
    steps = []
    for _ in range(cfg.steps):
        op, b = rng.choice(cfg.operators), _operand(rng, cfg)
        if op == "*" and has_additive:
            expr = f"({expr})"
        expr = f"{expr}{op}{b}"
        has_additive = has_additive or op in "+-"
        new = _APPLY[op](value, b)
        steps.append(f"{value}{op}{b}={new}.")
        value = new
    solution = f"{' '.join(steps)} \\boxed{{{value}}}"
    qid = "arith-" + hashlib.sha1(expr.encode()).hexdigest()[:12]
    return Problem(qid, expr, str(value), solution, "synthetic")


def question_in_held_out(question: str, fraction: float) -> bool:
    """Whether a question belongs to the held-out split: a stable hash of its normalized text."""
    key = " ".join(question.split()).casefold().encode()
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return bucket < fraction


def generate_problems(cfg: ProblemsConfig, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(train, held_out) synthetic problems: distinct questions, sides by `question_in_held_out`.

    Raises ValueError when the knobs allow too few distinct questions for the counts asked.
    """
    rng = random.Random(seed)
    train: dict[str, Problem] = {}
    held: dict[str, Problem] = {}
    want_train, want_held = cfg.n_train, cfg.n_held_out
    attempts, limit = 0, 50 * (want_train + want_held) + 10_000
    while len(train) < want_train or len(held) < want_held:
        attempts += 1
        if attempts > limit:
            raise ValueError(
                f"only {len(train)} train / {len(held)} held-out distinct problems after {limit} draws; "
                "raise max_digits or steps, or lower n_train / n_held_out"
            )
        p = make_arithmetic(rng, cfg.synthetic)
        side = held if question_in_held_out(p.question, cfg.held_out_fraction) else train
        quota = want_held if side is held else want_train
        if p.question not in side and len(side) < quota:
            side[p.question] = p
    return list(train.values()), list(held.values())



def fresh_problems(cfg: ProblemsConfig, seed: int, avoid_seed: int) -> list[Problem]:
    """Training-side problems drawn with generator seed `seed`, minus those the run with
    `avoid_seed` trains on: problems a model built on that run never saw (held-out questions
    are excluded by `question_in_held_out` on both sides already)."""
    seen = {p.question for p in generate_problems(cfg, avoid_seed)[0]}
    return [p for p in generate_problems(cfg, seed)[0] if p.question not in seen]

# --------------------------------------------------------------------------- files

_QUESTION_FIELDS = ("question", "problem", "prompt")
_ID_FIELDS = ("id", "unique_id")


def _as_answer(value: object, where: str) -> str:
    """A reference answer as text: strings stripped, numbers written without a spurious `.0`."""
    number = number_text(value)
    if number is not None:
        return number
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise InputError(f"{where}: answer must be a non-empty string or a number, got {value!r}")


def load_problems(
    path: str | Path,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    source: str | None = None,
) -> list[Problem]:
    """Problems from a JSONL/Parquet file, fields mapped by name or found automatically.

    Covers the shared benchmarks: GSM8K (`question`, `answer` ending `#### N`: the number is
    the reference, the whole text the solution), MATH-500 (`problem`, `answer`, `solution`),
    AIME24 and AMC23 (`problem`, numeric `answer`). Any bad row stops the load with a
    one-line `file:line: ...` InputError.
    """
    path = Path(path)
    source = source or path.stem
    problems = []
    for rec in read_records(path):
        where = f"{path}:{rec.number}"
        if rec.error:
            raise InputError(f"{path}: {rec.error}")
        row = rec.fields
        qf = question_field or next((f for f in _QUESTION_FIELDS if f in row), _QUESTION_FIELDS[0])
        af = answer_field or "answer"
        for f in (qf, af):
            if f not in row:
                raise InputError(f"{where}: missing field {f!r}")
        question = row[qf]
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{where}: field {qf!r} must be a non-empty string")
        raw_answer = row[af]
        solution = row.get("solution") if isinstance(row.get("solution"), str) else None
        if isinstance(raw_answer, str) and "####" in raw_answer:
            solution, raw_answer = raw_answer, extract_reference(raw_answer)
        answer = _as_answer(raw_answer, f"{where}: field {af!r}")
        idf = id_field or next((f for f in _ID_FIELDS if f in row), None)
        if id_field and id_field not in row:
            raise InputError(f"{where}: missing field {id_field!r}")
        pid = f"{source}-{row[idf]}" if idf else f"{source}-{rec.number}"
        problems.append(Problem(pid, question.strip(), answer, solution, source))
    if not problems:
        raise InputError(f"{path}: no problems")
    return problems


def split_problems(problems: Iterable[Problem], held_out_fraction: float) -> tuple[list[Problem], list[Problem]]:
    """(train, held_out) by `question_in_held_out`: order-independent, never overlapping."""
    train, held = [], []
    for p in problems:
        (held if question_in_held_out(p.question, held_out_fraction) else train).append(p)
    return train, held


def problem_sets(cfg: ProblemsConfig, seed: int) -> tuple[list[Problem], list[Problem]]:
    """The configured (train, held_out) problems: generated, or loaded and split (then capped)."""
    if cfg.source == "synthetic":
        return generate_problems(cfg, seed)
    loaded = load_problems(cfg.source, cfg.question_field, cfg.answer_field, cfg.id_field)
    train, held = split_problems(loaded, cfg.held_out_fraction)
    return train[: cfg.n_train], held[: cfg.n_held_out]
