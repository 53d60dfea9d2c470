import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_core.config import ProblemsConfig, SyntheticConfig, load_config
from spark_core.data.problems import (
    Problem,
    fresh_problems,
    generate_problems,
    load_problems,
    make_arithmetic,
    problem_sets,
    split_problems,
)
from spark_core.data.records import InputError
from spark_core.verify import verify_response


def test_generator_is_seeded():
    cfg = ProblemsConfig(n_train=300, n_held_out=40)
    assert generate_problems(cfg, 7) == generate_problems(cfg, 7)
    assert generate_problems(cfg, 7) != generate_problems(cfg, 8)


@pytest.mark.parametrize(
    "knobs",
    [
        dict(),
        dict(min_digits=3, max_digits=3, operators="*"),
        dict(steps=3, operators="+-*"),
        dict(min_digits=1, max_digits=1, steps=2, operators="-"),
    ],
)
def test_generated_solutions_are_short_and_verify(knobs):
    syn = SyntheticConfig(**knobs)
    rng = random.Random(0)
    for _ in range(200):
        p = make_arithmetic(rng, syn)
        assert verify_response(p.solution, p.answer).correct is True, p
        assert int(p.answer) == eval(p.question)  # the parentheses make the question mean the solution
        assert len(p.solution) <= 30 * syn.steps + 15, p.solution
        assert p.solution.count("=") == syn.steps
        operands = [int(t) for t in p.question.replace("(", " ").replace(")", " ").replace("+", " ").replace("-", " ").replace("*", " ").split()]
        assert all(len(str(o)) in range(syn.min_digits, syn.max_digits + 1) for o in operands)


def test_generated_counts_distinct_and_split():
    cfg = ProblemsConfig(n_train=500, n_held_out=60, held_out_fraction=0.1)
    train, held = generate_problems(cfg, 0)
    assert len(train) == 500 and len(held) == 60
    qs_train, qs_held = {p.question for p in train}, {p.question for p in held}
    assert len(qs_train) == 500 and len(qs_held) == 60
    assert not qs_train & qs_held


def test_fresh_pool_avoids_the_runs_training_and_held_out_problems():
    cfg = ProblemsConfig(n_train=500, n_held_out=60, synthetic=SyntheticConfig(max_digits=2, operators="+-"))
    train, held = generate_problems(cfg, 0)
    fresh = fresh_problems(cfg, 7, 0)
    seen = {p.question for p in train + held}
    assert fresh and not {p.question for p in fresh} & seen
    assert len(fresh) < 500  # the small space makes the two draws overlap: the overlap was removed
    assert fresh == fresh_problems(cfg, 7, 0)


def test_too_small_a_space_is_a_clear_error():
    cfg = ProblemsConfig(n_train=500, n_held_out=10, synthetic=SyntheticConfig(max_digits=1, operators="+"))
    with pytest.raises(ValueError, match="distinct problems"):
        generate_problems(cfg, 0)


def test_config_validation_names_the_field(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("problems:\n  synthetic:\n    operators: '/'\n")
    with pytest.raises(InputError, match=r"problems.synthetic: .*operators"):
        load_config(bad)
    bad.write_text("problem: {}\n")
    with pytest.raises(InputError, match="problem: Extra inputs"):
        load_config(bad)


questions = st.text(alphabet="ab +1", min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(questions, min_size=1, max_size=60), st.floats(0.05, 0.95), st.randoms())
def test_split_never_overlaps_and_ignores_order(qs, fraction, rnd):
    problems = [Problem(f"p{i}", q, "1") for i, q in enumerate(qs)]
    train, held = split_problems(problems, fraction)
    assert len(train) + len(held) == len(problems)
    norm = lambda ps: {" ".join(p.question.split()).casefold() for p in ps}  # noqa: E731
    assert not norm(train) & norm(held)
    shuffled = problems[:]
    rnd.shuffle(shuffled)
    train2, held2 = split_problems(shuffled, fraction)
    assert {p.id for p in held2} == {p.id for p in held}


@pytest.mark.parametrize(
    "name, n, first_answer",
    [("gsm8k", 1319, "18"), ("math500", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"), ("aime24", 30, "204"), ("amc23", 40, "27")],
)
def test_benchmark_loaders(benchmarks, name, n, first_answer):
    ps = load_problems(benchmarks / f"{name}.jsonl")
    assert len(ps) == n
    assert ps[0].answer == first_answer
    assert len({p.id for p in ps}) == n
    assert all(p.question and p.answer for p in ps)
    if name in ("gsm8k", "math500"):
        assert all(verify_response(p.solution, p.answer).correct for p in ps[:50])


def test_loader_field_mapping_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "set.parquet"
    pq.write_table(pa.table({"q": ["1+1", "2+2"], "gold": [2, 4], "key": ["x", "y"]}), path)
    ps = load_problems(path, question_field="q", answer_field="gold", id_field="key", source="mine")
    assert ps == [Problem("mine-x", "1+1", "2", None, "mine"), Problem("mine-y", "2+2", "4", None, "mine")]


@pytest.mark.parametrize(
    "line, message",
    [
        ({"answer": "1"}, "rows.jsonl:2: missing field 'question'"),
        ({"question": "q"}, "rows.jsonl:2: missing field 'answer'"),
        ({"question": "", "answer": "1"}, "rows.jsonl:2: field 'question' must be a non-empty string"),
        ({"question": "q", "answer": None}, "rows.jsonl:2: field 'answer': answer must be"),
        ({"question": "q", "answer": [1]}, "rows.jsonl:2: field 'answer': answer must be"),
    ],
)
def test_loader_bad_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "ok", "answer": "1"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(InputError) as e:
        load_problems(path)
    assert message in str(e.value)


def test_file_source_in_config_is_loaded_and_split(benchmarks, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"problems:\n  source: {benchmarks / 'gsm8k.jsonl'}\n  n_train: 100000\n  n_held_out: 100000\n  held_out_fraction: 0.2\n")
    train, held = problem_sets(load_config(cfg).problems, 0)
    assert len(train) + len(held) == 1319
    assert 0.15 < len(held) / 1319 < 0.25
    assert not {p.question for p in train} & {p.question for p in held}
