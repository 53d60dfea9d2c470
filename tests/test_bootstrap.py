"""The supervised traces of `spark bootstrap`: forward (re-solve) and inverse checks."""

import random

from spark_core.model.bootstrap import (
    inverse_check,
    inverse_problem,
    make_example,
    pairwise_trace,
    pointwise_trace,
)
from spark_core.data.problems import Problem
from spark_core.verify import extract_answer, verify_response

ADD = Problem("p1", "12+34", "46", "12+34=46. \\boxed{46}", "synthetic")
SUB = Problem("p2", "61-55", "6", "61-55=6. \\boxed{6}", "synthetic")
TWO = Problem("p3", "3+4*2", "11", "4*2=8. 3+8=11. \\boxed{11}", "synthetic")


def test_inverse_check_of_one_step_problems():
    assert inverse_check(ADD, "47") == ("47-34", "13", "12")
    assert inverse_check(ADD, "46") == ("46-34", "12", "12")
    assert inverse_check(SUB, "6") == ("6+55", "61", "61")
    assert inverse_check(SUB, "-4") == ("-4+55", "51", "61")
    assert inverse_check(TWO, "11") is None and inverse_check(ADD, "4.5") is None


def test_traces_forward_and_inverse():
    assert pointwise_trace(ADD, "47", "No") == "12+34=46. 46 vs 47: 4=4 6#7. \\boxed{No}"
    assert pointwise_trace(ADD, "47", "No", "inverse") == "47-34=13. 13 vs 12: 1=1 3#2. \\boxed{No}"
    assert pairwise_trace(ADD, "47", "46", "B", "inverse") == (
        "A 47-34=13: 1=1 3#2 N. B 46-34=12: 1=1 2=2 Y. \\boxed{B}")
    # Where no inverse exists the trace falls back to the forward check.
    assert pointwise_trace(TWO, "12", "No", "inverse") == pointwise_trace(TWO, "12", "No")


def test_inverse_examples_end_in_their_true_verdict_and_teach_inverse_solves():
    rng = random.Random(0)
    kinds = {"solve": 0, "inverse solve": 0}
    for i in range(200):
        p = (ADD, SUB)[i % 2]
        for kind in ("pointwise", "pairwise"):
            ex = make_example(kind, p, rng, True, check="inverse")
            assert extract_answer(ex.response, "boxed").answer == ex.label
            assert " vs " in ex.response or kind == "pairwise"
        ex = make_example("solve", p, rng, True, check="inverse")
        kinds["inverse solve" if ex.prompt != p.question else "solve"] += 1
        assert verify_response(ex.response, ex.label).correct
    assert 60 < kinds["inverse solve"] < 140
    q = inverse_problem(ADD, random.Random(1))
    assert q.question.endswith("-34") and verify_response(q.solution, q.answer).correct


def test_forward_examples_draw_as_before():
    """The default check leaves the shipped model's recipe and its random draws unchanged: these
    are what the code before the inverse option made (checked equal on 400 examples then)."""
    rng = random.Random(5)
    got = [make_example(k, ADD, rng, False).response for k in ("solve", "pointwise", "pairwise", "reflection")]
    assert got == [
        "12+34=46. \\boxed{46}",
        "12+34=46. 46 vs 64: 4#6 6#4. \\boxed{No}",
        "12+34=46. A 46: 4=4 6=6 Y. B 64: 4#6 6#4 N. \\boxed{A}",
        "12+34=46. \\boxed{46}",
    ]
