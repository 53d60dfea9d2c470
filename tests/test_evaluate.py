"""Evaluation: the reward benchmark, judge metrics (AUROC, shares, precision/recall), log-odds, TTS loops."""

import json
import math
from pathlib import Path

import pytest
import torch

from spark_core.config import load_config
from spark_core.evaluation.evaluate import (
    auroc, build_judge_set, judge_report, run_judge_set, tts_best_of_n, tts_reflect, verdict_logodds,
    verdict_of,
)
from spark_core.data.problems import Problem
from spark_core.judge.recycle import Rollout
from spark_core.model.rollout import HFEngine, Sample
from spark_core.data.store import read_table

ROOT = Path(__file__).resolve().parents[1]


def test_auroc_by_hand():
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auroc([1.0, 1.0], [True, False]) == 0.5  # a tie counts one half
    assert auroc([3.0, 2.0, 1.0], [True, True, False]) == 1.0
    assert auroc([1.0, 2.0], [True, True]) is None  # one class only


def _groups(n: int) -> list[list[Rollout]]:
    """Synthetic verified groups: problem i has 4 samples, mixed, all-right or all-wrong."""
    out = []
    for i in range(n):
        ans = str(10 + i)
        pattern = [(True, False, True, False), (True, True, True, True), (False, False, False, False)][i % 3]
        out.append([Rollout(f"p{i}", f"{i}+10", ans, s, f"\\boxed{{{ans if ok else int(ans) + 1}}}",
                            ans if ok else str(int(ans) + 1), ok) for s, ok in enumerate(pattern)])
    return out


def test_judge_set_is_balanced_and_reflection_only_from_wrong():
    items = build_judge_set(_groups(30), seed=0)
    points = [it for it in items if it.kind == "pointwise"]
    assert sum(it.candidate_correct for it in points) == sum(not it.candidate_correct for it in points) > 0
    for wording in ("yes_no", "a_b"):
        ws = [it for it in points if it.wording == wording]
        assert abs(sum(it.candidate_correct for it in ws) - sum(not it.candidate_correct for it in ws)) <= 1
    pairs = [it for it in items if it.kind == "pairwise"]
    assert abs(sum(it.label == "A" for it in pairs) - sum(it.label == "B" for it in pairs)) <= 1 and pairs
    refl = [it for it in items if it.kind == "reflection"]
    assert refl and all(it.candidate_correct is False for it in refl)
    for it in refl:  # the shown answer is a wrong one; the label is the reference
        assert it.label not in it.prompt.split(":")[1]
    assert build_judge_set(_groups(30), seed=0) == items  # seeded


def test_constant_yes_scores_the_share_of_correct_candidates():
    """Sanity check on the metric: always `Yes` scores exactly the share of correct answers."""
    items = build_judge_set(_groups(30), seed=1)
    verdicts = ["yes" if it.wording == "yes_no" else "a" for it in items]
    m = judge_report(items, verdicts)
    yn = [it for it in items if it.wording == "yes_no"]
    assert m["pointwise_yes_no_accuracy"] == sum(it.candidate_correct for it in yn) / len(yn)
    assert m["verdict_share_yes"] == 1.0 and m["verdict_share_a_pairwise"] == 1.0
    assert m["recall_correct"] == 1.0 and m["precision_correct"] == 0.5
    perfect = judge_report(items, [it.label.casefold() for it in items])
    assert perfect["judge_accuracy"] == 1.0 and perfect["judge_parse_rate"] == 1.0
    broken = judge_report(items, [None] * len(items))
    assert broken["judge_accuracy"] == 0.0 and broken["judge_parse_rate"] == 0.0
    scores = [1.0 if (it.candidate_correct if it.kind == "pointwise" else it.label == "A") else -1.0 for it in items]
    assert judge_report(items, verdicts, scores)["judge_auroc"] == 1.0


class ScriptedEngine:
    """An engine whose answers are a function of the prompt (for the TTS loops)."""

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def generate(self, prompts, spec):
        self.prompts += list(prompts)
        return [[Sample(i, s, self.answer(p), [1], [0.0], "stop", 1) for s in range(spec.group_size)]
                for i, p in enumerate(prompts)]

    def close(self):
        pass


PROBLEMS = [Problem(f"q{i}", f"{i}+1", str(i + 1), None, "t") for i in range(3)]


def test_tts_reflect_stops_at_yes():
    engine = ScriptedEngine(lambda p: "\\boxed{Yes}" if "Yes or No" in p else "\\boxed{0}")
    m, history = tts_reflect(engine, PROBLEMS, ["\\boxed{1}", "\\boxed{9}", "\\boxed{3}"], "compact", 8, 8)
    assert m["tts_reflect_extra_generations"] == 1.0  # one judge call each, no re-solve
    assert history == [["\\boxed{1}"], ["\\boxed{9}"], ["\\boxed{3}"]]
    assert m["tts_reflect_accuracy"] == pytest.approx(2 / 3)


def test_tts_reflect_stops_after_two_rounds():
    engine = ScriptedEngine(lambda p: "\\boxed{No}" if "Yes or No" in p else "\\boxed{2}")
    m, history = tts_reflect(engine, PROBLEMS, ["\\boxed{5}"] * 3, "compact", 8, 8)
    assert m["tts_reflect_extra_generations"] == 4.0  # judge, re-solve, judge, re-solve
    assert all(len(h) == 3 for h in history)
    assert sum("Yes or No" in p for p in engine.prompts) == 6
    # the re-solve is shown the rejected answer
    assert any("5" in p and "wrong" in p for p in engine.prompts)
    assert m["tts_reflect_accuracy"] == pytest.approx(1 / 3)  # only 1+1=2 is right


def test_best_of_n_keeps_the_accepted_majority():
    def answer(p):
        if "Yes or No" in p:
            return "\\boxed{Yes}" if "=2." in p or "=2 " in p or p.split("=")[1].startswith("2") else "\\boxed{No}"
        return "\\boxed{2}"

    m = tts_best_of_n(ScriptedEngine(answer), PROBLEMS[1:2], 4, "compact", 8, 8, seed=0)
    assert m["tts_bon_accuracy"] == 1.0 and m["tts_bon_accept_rate"] == 1.0 and m["tts_bon_extra_generations"] == 7


def test_verdict_logodds_match_a_full_forward_pass():
    engine = HFEngine(ROOT / "data" / "tiny-model", device="cpu")
    prompt, response = "Check: 12+5=17. Yes or No?", "12+5=17 17 vs 17: 1=1 7=7. \\boxed{Yes}"
    (odds,) = verdict_logodds(engine, [prompt], [response], ["Yes"], ["No"])
    tok, model = engine.tokenizer, engine.model
    prefix = engine.encode([prompt])[0] + tok(response[: response.rfind("{") + 1], add_special_tokens=False)["input_ids"]

    def logp(label):
        cont = tok(label + "}", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([prefix + cont])).logits[0].log_softmax(-1)
        return sum(lp[len(prefix) - 1 + i, t].item() for i, t in enumerate(cont))

    assert odds == pytest.approx(logp("Yes") - logp("No"), abs=1e-4)
    (no_box,) = verdict_logodds(engine, [prompt], ["12+5=17"], ["Yes"], ["No"])  # a box is appended
    assert math.isfinite(no_box)
    assert verdict_of("so \\boxed{ yes }.") == "yes" and verdict_of("no box") is None


def test_run_judge_set_on_the_tiny_model():
    engine = HFEngine(ROOT / "data" / "tiny-model", device="cpu")
    items = build_judge_set(_groups(12), seed=0)
    m, rows = run_judge_set(engine, items, 96)
    assert len(rows) == len(items)
    assert 0 <= m["judge_accuracy"] <= 1 and m["judge_parse_rate"] > 0.5
    assert m["judge_auroc"] is not None and 0 <= m["judge_auroc"] <= 1
    assert m["reflection_n"] == sum(it.kind == "reflection" for it in items)


def test_pipeline_judge_set_never_overlaps_training(tmp_path):
    from spark_core.stages.evaluate import judge_set_stage
    from spark_core.stages.problems import prepare_problems

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text((ROOT / "configs" / "tiny.yaml").read_text() + "eval:\n  judge_problems: 20\n")
    cfg = load_config(cfg_path)
    run = tmp_path / "run"
    prepare_problems(cfg, run)
    items = judge_set_stage(cfg, run)
    assert items and {it.kind for it in items} <= {"pointwise", "pairwise", "reflection"}
    problems = read_table(run, "problems").to_pylist()
    train_ids = {p["id"] for p in problems if p["split"] == "train"}
    train_questions = {p["question"] for p in problems if p["split"] == "train"}
    held = {p["id"]: p["question"] for p in problems if p["split"] == "held_out"}
    assert all(it.source_prompt_id in held and it.source_prompt_id not in train_ids for it in items)
    assert not {held[it.source_prompt_id] for it in items} & train_questions
    assert judge_set_stage(cfg, run) == items  # built once, then read back


def test_eval_and_judge_eval_cli(tmp_path):
    import json

    from typer.testing import CliRunner

    from spark_cli.main import app

    model = str(ROOT / "data" / "tiny-model")
    cfg = str(ROOT / "configs" / "tiny.yaml")
    r = CliRunner().invoke(app, ["eval", "--checkpoint", model, "-c", cfg, "--limit", "6", "--tts", "reflect",
                                 "-k", "2", "-o", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    assert "synthetic: 6 problems, greedy accuracy" in r.output and "with self-reflection" in r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert {"policy_accuracy", "mean_at_2", "pass_at_2", "tts_reflect_accuracy"} <= set(m)
    r = CliRunner().invoke(app, ["eval", "--checkpoint", model, "--benchmark", "nope"])
    assert r.exit_code == 2 and "no such benchmark file" in r.output
    r = CliRunner().invoke(app, ["eval", "--checkpoint", model, "--tts", "magic"])
    assert r.exit_code == 2 and "--tts" in r.output

    data = tmp_path / "labelled.jsonl"
    rows = [{"question": "12+5", "response": "\\boxed{17}", "correct": True},
            {"question": "12+5", "response": "\\boxed{18}", "correct": "no"},
            {"question": "3+4", "response": "\\boxed{7}", "correct": "maybe"},
            {"question": "3+4", "response": 7, "correct": 1}]
    data.write_text("".join(json.dumps(x) + "\n" for x in rows) + "not json\n")
    out = tmp_path / "judged.parquet"
    r = CliRunner().invoke(app, ["judge-eval", str(data), "--checkpoint", model, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 responses judged (3 rows skipped)" in r.output and "parse rate" in r.output and "AUROC" in r.output
    assert ":3: field 'correct' is 'maybe'" in r.output and ":4:" in r.output and ":5:" in r.output
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 2
    r = CliRunner().invoke(app, ["judge-eval", str(data), "--checkpoint", model, "--label-field", "ok"])
    assert r.exit_code == 2 and "no field 'ok'" in r.output


def test_eval_responses_verify_then_judge_eval(tmp_path):
    """The user's path to a labelled judge set: `spark eval --responses`, `spark verify -o`,
    `spark judge-eval` on the verified file (label field `correct`)."""
    from typer.testing import CliRunner

    from spark_cli.main import app

    model = str(ROOT / "data" / "tiny-model")
    resp, labelled = tmp_path / "responses.jsonl", tmp_path / "labelled.parquet"
    r = CliRunner().invoke(app, ["eval", "--checkpoint", model, "--limit", "6", "--responses", str(resp),
                                 "--solve", "bare", "--max-new-tokens", "24"])
    assert r.exit_code == 0, r.output
    assert "boxed" in r.output and len(resp.read_text().splitlines()) == 6
    r = CliRunner().invoke(app, ["verify", str(resp), "--response-field", "response", "--reference-field", "answer",
                                 "-o", str(labelled)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["judge-eval", str(labelled), "--checkpoint", model, "--label-field", "correct"])
    assert r.exit_code == 0, r.output
    assert "6 responses judged" in r.output and "parse rate" in r.output
    r = CliRunner().invoke(app, ["eval", "--checkpoint", model, "--solve", "no placeholder"])
    assert r.exit_code == 2 and "neither a preset" in r.output


def test_tts_compare_by_hand(monkeypatch):
    """One problem (1+1), four samples answering 3, 3, 2, 3; the judge says Yes to 2 only; scripted
    verdict log-odds [0, -1, 2, 1] give P(Yes) [0.5, 0.27, 0.88, 0.73]. N=2: every rule picks 3;
    N=4: majority 3 (wrong), best-of-N the 0.88 sample (right), the P(Yes)-weighted vote 3
    (0.5 + 0.27 + 0.73 = 1.5 against 0.88: wrong)."""
    import spark_core.evaluation.evaluate as ev

    answers = ["\\boxed{3}", "\\boxed{3}", "\\boxed{2}", "\\boxed{3}"]

    class Engine(ScriptedEngine):
        def generate(self, prompts, spec):
            self.prompts += list(prompts)
            if spec.group_size > 1:
                return [[Sample(i, s, answers[s], [1], [0.0], "stop", 1) for s in range(spec.group_size)]
                        for i, _ in enumerate(prompts)]
            return [[Sample(i, 0, self.answer(p), [1], [0.0], "stop", 1)] for i, p in enumerate(prompts)]

    engine = Engine(lambda p: ("\\boxed{Yes}" if "=2." in p else "\\boxed{No}") if "Yes or No" in p else "\\boxed{2}")
    monkeypatch.setattr(ev, "verdict_logodds", lambda engine, prompts, *a, **k: [0.0, -1.0, 2.0, 1.0][: len(prompts)])
    m, rows = ev.tts_compare(engine, PROBLEMS[1:2], [2, 4], "compact", 8, 8, seed=0, greedy_answers=["\\boxed{2}"])
    assert [r["p_yes"] for r in rows] == pytest.approx([0.5, 0.2689, 0.8808, 0.7311], abs=1e-4)
    assert [r["correct"] for r in rows] == [False, False, True, False]
    assert (m["tts_majority_at_2"], m["tts_best_at_2"], m["tts_weighted_at_2"], m["tts_pass_at_2"]) == (0, 0, 0, 0)
    assert (m["tts_majority_at_4"], m["tts_best_at_4"], m["tts_weighted_at_4"], m["tts_pass_at_4"]) == (0, 1, 0, 1)
    assert m["judge_true_pass"] == 1.0 and m["judge_false_pass"] == 0.0 and m["judge_verdict_parse_rate"] == 1.0
    assert m["tts_judge_calls_at_4"] == 4 and m["sample_accuracy"] == 0.25
    assert m["tts_reflect_accuracy"] == 1.0 and m["tts_reflect_generations"] == 2.0  # greedy + one judge call (Yes)
    assert sum(p.startswith("Check:") for p in engine.prompts) == 4 + 1  # each sample judged once, plus reflection's


def test_spark_eval_tts_compare_on_the_tiny_model(tmp_path):
    """The command end to end on the shipped tiny model: the table printed, the samples written."""
    from typer.testing import CliRunner

    from spark_cli.main import app

    out, samples = tmp_path / "m.json", tmp_path / "s.jsonl"
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(ROOT / "data" / "tiny-model"), "--tts", "compare",
                                 "--compare-n", "2", "--compare-n", "4", "--limit", "6", "-o", str(out),
                                 "--samples-out", str(samples)])
    assert r.exit_code == 0, r.output
    assert "N=4: majority" in r.output and "greedy + self-reflection" in r.output
    m = json.loads(out.read_text())
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(rows) == 6 * 4 and all(0 <= x["p_yes"] <= 1 for x in rows)
    assert m["tts_pass_at_4"] >= max(m["tts_majority_at_4"], m["tts_best_at_4"], m["tts_weighted_at_4"])
    assert m["tts_pass_at_4"] >= m["tts_pass_at_2"]
