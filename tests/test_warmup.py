"""The format warm-up's rules (spark_core/model/warmup.py) and the solve prompts (spark_core/data/prompts.py)."""

import random
import shutil
from pathlib import Path

import pytest

from spark_core.config import PromptsConfig, SparkConfig
from spark_core.evaluation.evaluate import JudgeItem, judge_report
from spark_core.periods import Task, solve_tasks
from spark_core.data.problems import Problem
from spark_core.data.prompts import SOLVE_PRESETS, solve_prompt
from spark_core.model.rollout import Sample
from spark_core.model.warmup import boxed_text, judge_examples, lenient_verdict, parse_rates, solve_examples, strict_parsed


def _s(text, finish="stop", i=0):
    return Sample(0, i, text, [1, 2, 3], [0.0] * 3, finish, 5)


def test_presets_and_templates():
    assert solve_prompt("bare", "3+54") == "3+54"
    assert solve_prompt("step_by_step", "3+54").startswith("3+54\nPlease reason step by step")
    assert "\\boxed{}" in solve_prompt("concise", "3+54")
    # a user template: only {question} is replaced, LaTeX braces are left alone
    assert solve_prompt("Q: {question} \\boxed{}", "1+1") == "Q: 1+1 \\boxed{}"
    with pytest.raises(ValueError, match="neither a preset"):
        PromptsConfig(solve="no placeholder here")
    assert SparkConfig().prompts.solve == "bare" and set(SOLVE_PRESETS) == {"bare", "concise", "step_by_step"}
    t = solve_tasks([Problem("p1", "3+54", "57")], "concise")[0]
    assert t.question == "3+54" and t.prompt != t.question and t.label == "57"


def test_new_default_fields_keep_the_config_hash():
    """Runs made before prompts/warmup/blocked logits existed keep their hash (and resume)."""
    cfg = SparkConfig()
    assert "prompts" not in cfg.resolved() or cfg.hash() == SparkConfig.model_validate(cfg.resolved()).hash()
    from spark_core.config import stable_resolved

    data = stable_resolved(cfg)
    assert "prompts" not in data and "warmup" not in data and "blocked_logits" not in data["train"]
    changed = SparkConfig.model_validate({"prompts": {"solve": "concise"}})
    assert "prompts" in stable_resolved(changed) and changed.hash() != cfg.hash()


@pytest.mark.parametrize("text,label,want", [
    ("\\boxed{Yes}", "No", "Yes"),
    ("No.", "Yes", "No"),
    ("Yes, 3+54=57 is correct.", "No", "Yes"),
    ("I think yes... no, it is wrong: No", "Yes", "No"),
    ("Student B is right.", "A", "B"),
    ("(A)", "B", "A"),
    ("The answer is \\boxed{A}", "B", "A"),
    ("It depends.", "Yes", None),
    ("A careful check shows nothing.", "A", None),  # an article is not a verdict
    ("\\boxed{57}", "Yes", None),
])
def test_lenient_verdict(text, label, want):
    assert lenient_verdict(text, label) == want


def test_judge_examples_keep_the_models_own_verdict_not_the_label():
    """A wrong verdict stays wrong: the warm-up teaches where the verdict goes, never which it is."""
    task = Task("j1", "pointwise", "Is 3+54=57 correct?", "Yes")
    ex = judge_examples([task], [[_s("No"), _s("No.", i=1)]], random.Random(0))
    assert len(ex) == 1 and ex[0].target.endswith("\\boxed{No}.") and ex[0].rewritten
    # unreadable or truncated responses give no example
    assert judge_examples([task], [[_s("Hmm"), _s("Yes", finish="length")]], random.Random(0)) == []


def test_balanced_judge_examples_take_the_verdict_trained_least():
    """`warmup.balance_verdicts`: a model that mostly says No is trained on its own Yes where it
    gave one, never on a verdict it did not give; off, the choice is as before."""
    tasks = [Task(f"j{i}", "pointwise", f"Is {i} right?", "Yes" if i % 2 else "No") for i in range(6)]
    groups = [[_s("No"), _s("No.", i=1), _s("Yes" if i < 3 else "No", i=2)] for i in range(6)]
    plain = judge_examples(tasks, groups, random.Random(0))
    assert [e.prompt_id for e in plain] == [f"j{i}" for i in range(6)]
    balanced = judge_examples(tasks, groups, random.Random(0), balance=True)
    verdicts = {e.prompt_id: e.target.endswith("\\boxed{Yes}.") for e in balanced}
    assert [e.prompt_id for e in balanced] == [f"j{i}" for i in range(6)]  # in the prompts' order
    assert sum(verdicts.values()) >= 2 and not any(verdicts[f"j{i}"] for i in range(3, 6))
    # a verdict the model gave on one prompt only is the one trained there
    lone = [[_s("No"), _s("Yes" if i == 4 else "No.", i=1)] for i in range(6)]
    for seed in range(5):
        got = judge_examples(tasks, lone, random.Random(seed), balance=True)
        assert [e.target.endswith("\\boxed{Yes}.") for e in got] == [i == 4 for i in range(6)]
    assert judge_examples(tasks, groups, random.Random(0)) == plain  # off: unchanged, seeded


@pytest.mark.parametrize("field,value", [("balance_verdicts", True), ("shortest_answers", True), ("answer_budget", 0.5)])
def test_a_later_warmup_field_at_its_default_keeps_hashes_and_warmup_keys(tmp_path, field, value):
    from spark_core.config import stable_resolved
    from spark_core.model.shared_warmup import warmup_key

    on = SparkConfig.model_validate({"warmup": {"enabled": True}})
    before = {k: v for k, v in on.warmup.model_dump(mode="json").items() if k not in ("balance_verdicts", "shortest_answers", "answer_budget")}
    assert stable_resolved(on)["warmup"] == before  # what the hash and the warm-up key saw before the fields
    changed = SparkConfig.model_validate({"warmup": {"enabled": True, field: value}})
    assert changed.hash() != on.hash()
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert warmup_key(on, model) != warmup_key(changed, model)


def test_solve_examples_are_correct_finished_and_boxed():
    task = Task("p1", "solve", "3+54 ...", "57", "3+54")
    groups = [[_s("3 + 54 equals 57."), _s("It is 58."), _s("3+54=57. \\boxed{57}", finish="length")]]
    ex = solve_examples([task], groups, random.Random(0))
    assert [e.target for e in ex] == ["3 + 54 equals 57.\nThe final answer is \\boxed{57}."]
    assert boxed_text("so \\boxed{57}", "57") == "so \\boxed{57}"


def test_shortest_answers_take_the_fewest_tokens_among_the_correct_finished_ones():
    task = Task("p1", "solve", "3+54 ...", "57", "3+54")
    long = Sample(0, 0, "Step 1: add 3 and 54. Step 2: the sum is 57. \\boxed{57}", list(range(20)), [0.0] * 20, "stop", 5)
    short = Sample(0, 1, "\\boxed{57}", list(range(6)), [0.0] * 6, "stop", 5)
    cut = Sample(0, 2, "\\boxed{57}", list(range(3)), [0.0] * 3, "length", 5)  # shorter, but not finished
    wrong = Sample(0, 3, "\\boxed{58}", list(range(2)), [0.0] * 2, "stop", 5)
    picks = {solve_examples([task], [[long, short, cut, wrong]], random.Random(seed), shortest=True)[0].sampled
             for seed in range(8)}
    assert picks == {short.text}
    anyone = {solve_examples([task], [[long, short, cut, wrong]], random.Random(seed))[0].sampled for seed in range(8)}
    assert anyone == {long.text, short.text}  # off: a random correct finished answer, as before


def test_an_answer_budget_keeps_only_responses_within_it():
    """`warmup.answer_budget`: a random pick among the short enough answers and verdicts; a
    prompt with none gives no example; no budget, the draw is as before."""
    task = Task("p1", "solve", "3+54 ...", "57", "3+54")
    long = Sample(0, 0, "Step 1: add 3 and 54. Step 2: the sum is 57. \\boxed{57}", list(range(60)), [0.0] * 60, "stop", 5)
    mid = Sample(0, 1, "3+54 = 57, so \\boxed{57}", list(range(30)), [0.0] * 30, "stop", 5)
    short = Sample(0, 2, "\\boxed{57}", list(range(6)), [0.0] * 6, "stop", 5)
    picks = {solve_examples([task], [[long, mid, short]], random.Random(seed), max_tokens=48)[0].sampled for seed in range(12)}
    assert picks == {mid.text, short.text}  # not only the shortest
    assert solve_examples([task], [[long]], random.Random(0), max_tokens=48) == []
    assert {solve_examples([task], [[long, mid, short]], random.Random(seed))[0].sampled for seed in range(12)} == {
        long.text, mid.text, short.text}
    judge = Task("j1", "pointwise", "Is 3+54=57 correct?", "Yes")
    wordy = Sample(0, 0, "Let me check. " * 10 + "Yes", list(range(50)), [0.0] * 50, "stop", 5)
    terse = Sample(0, 1, "No", list(range(2)), [0.0] * 2, "stop", 5)
    got = {judge_examples([judge], [[wordy, terse]], random.Random(seed), max_tokens=32)[0].sampled for seed in range(8)}
    assert got == {terse.text}
    assert judge_examples([judge], [[wordy]], random.Random(0), max_tokens=32) == []


def test_strict_parse_rates():
    solve = Task("p1", "solve", "q", "57", "q")
    judge = Task("j1", "pointwise", "q", "Yes")
    groups = [[_s("\\boxed{57}"), _s("57")], [_s("\\boxed{No}"), _s("No"), _s("\\boxed{maybe}")]]
    assert parse_rates([solve, judge], groups) == {"solve_boxed": 0.5, "judge_parsed": pytest.approx(1 / 3)}
    assert strict_parsed(Task("j2", "pairwise", "q", "A"), "\\boxed{B}")


def test_judge_report_separates_format_failures_from_wrong_verdicts():
    items = [JudgeItem(f"i{n}", "pointwise", "yes_no", "p", lab, "Yes", "No", lab == "Yes", "s")
             for n, lab in enumerate(["Yes", "No", "Yes", "No"])]
    m = judge_report(items, ["yes", None, "no", "no"])
    assert m["judge_accuracy"] == 0.5  # the unparsed one counts as not right
    assert m["judge_parse_rate"] == 0.75
    assert m["judge_accuracy_parsed"] == pytest.approx(2 / 3)
    assert m["pointwise_parse_rate"] == 0.75


# --------------------------------------------------------------------------- the shared warm-up

_WARM = ("warmup:\n  enabled: true\n  problems: 4\n  judge_prompts: 2\n  samples: 2\n  epochs: 1\n  check_samples: 1\n"
         "rollout:\n  batch_prompts: 4\n  group_size: 2\n")


def _warm_cfg(tmp_path):
    from spark_core.config import load_config

    path = tmp_path / "warm.yaml"
    path.write_text((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text() + _WARM)
    return load_config(path)


def test_the_warmup_is_made_once_and_found_by_its_hash(tmp_path, monkeypatch):
    from spark_core.rundir import base_model, start_model
    from spark_core.stages.warmup import warmup_stage
    from spark_core.model.shared_warmup import is_complete, warmup_key
    from spark_core.stages.problems import prepare_problems

    root = tmp_path / "warmups"
    monkeypatch.setenv("SPARK_WARMUP_DIR", str(root))
    cfg = _warm_cfg(tmp_path)
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for run in runs.values():
        prepare_problems(cfg, run)
    first = warmup_stage(cfg, runs["a"], 0)
    shared = root / warmup_key(cfg, base_model(cfg))
    assert first["reused"] is False and first["shared"] == str(shared) and is_complete(shared)
    assert start_model(cfg, runs["a"]) == shared and not (runs["a"] / "checkpoints" / "warmup").exists()
    second = warmup_stage(cfg, runs["b"], 0)  # another run of the same config: found, not made again
    assert second["reused"] is True and second["shared"] == first["shared"]
    assert second["metrics"] == first["metrics"] and second["seconds"] < first["made_seconds"]
    assert (runs["b"] / "warmup" / "examples.parquet").read_bytes() == (runs["a"] / "warmup" / "examples.parquet").read_bytes()

    # What the warm-up does not read leaves the key alone; a changed warm-up recipe makes a new one.
    other_rl = SparkConfig.model_validate(cfg.resolved() | {"train": cfg.resolved()["train"] | {"lr": 0.5}})
    assert warmup_key(other_rl, base_model(cfg)) == warmup_key(cfg, base_model(cfg))
    changed = SparkConfig.model_validate(cfg.resolved() | {"warmup": cfg.resolved()["warmup"] | {"lr": 3e-5}})
    prepare_problems(changed, runs["c"])
    third = warmup_stage(changed, runs["c"], 0)
    assert third["reused"] is False and third["shared"] != first["shared"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted([Path(first["shared"]).name, Path(third["shared"]).name])

    # The shared copy gone: a run that used it redoes its warmup stage instead of failing later.
    shutil.rmtree(shared)
    redone = warmup_stage(cfg, runs["b"], 0)
    assert redone["reused"] is False and is_complete(shared) and redone["metrics"] == first["metrics"]
