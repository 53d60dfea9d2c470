import copy
from dataclasses import replace

import pytest
import torch

from spark_core.model.checkpoint import build_model, build_tokenizer
from spark_core.config import SparkConfig, TinyModelConfig
from spark_core.periods import Task, groups_for_recycling, judge_tasks, period_metrics, run_period, solve_tasks
from spark_core.data.problems import Problem
from spark_core.judge.recycle import recycle
from spark_core.model.rollout import HFEngine, SamplingSpec
from spark_core.data.store import write_table
from spark_core.model.trainer import Sequence_, Trainer, settings_from_config

ARCH = TinyModelConfig(hidden=32, layers=2, heads=2, intermediate=64, max_positions=160)


@pytest.fixture()
def setup():
    tok = build_tokenizer()
    model = build_model(tok, ARCH, 0)
    cfg = SparkConfig(train={"lr": 1e-3, "mini_batch_size": 32, "micro_batch_size": 16})
    trainer = Trainer(model, copy.deepcopy(model), settings_from_config(cfg.train, 100, 1.0), tok.pad_token_id, torch.device("cpu"))
    return HFEngine(model, tok, device="cpu"), trainer


def test_policy_then_reward_period_write_valid_tables(setup, tmp_path):
    engine, trainer = setup
    problems = [Problem(f"p{i}", f"{i}+1", str(i + 1)) for i in range(4)]
    tasks = solve_tasks(problems)
    rows, updates, m = run_period(engine, trainer, tasks, SamplingSpec(group_size=4, max_new_tokens=6, seed=0), "policy", run="t")
    assert len(rows) == 16 and len(updates) == 1 and m["solve_accuracy"] == 0.0
    write_table(tmp_path, "rollouts", rows, iteration=0, part="policy")
    write_table(tmp_path, "updates", updates, iteration=0, part="policy")
    # a random model gets nothing right: every group all-wrong, no judge sample needs a parsable answer in cot mode
    judge = recycle(groups_for_recycling(rows, tasks), 0, judge_input="cot").rows
    assert judge and all(r.kind in ("pointwise", "reflection") for r in judge)
    rrows, rupdates, rm = run_period(engine, trainer, judge_tasks(judge), SamplingSpec(group_size=2, max_new_tokens=6, seed=1),
                                     "reward", lr_scale=0.5, entropy_coef=0.01, clip_high=0.2)
    write_table(tmp_path, "rollouts", rrows, iteration=0, part="reward")
    assert rupdates[0]["phase"] == "reward" and rupdates[0]["step"] == 1
    assert rupdates[0]["lr"] == pytest.approx(updates[0]["lr"] * 0.5)
    assert trainer.s.entropy_coef == 0.0 and trainer.s.clip_high == 0.28  # overrides were for that period only
    assert "verdict_entropy" in rm and "label_share_No" in rm


def test_reward_temperature_is_used_to_recompute_logprobs(setup):
    """On-policy first step: the trainer's log-probs at the sampling temperature equal the
    engine's, so the ratio is 1 and nothing is clipped; at another temperature they are not."""
    engine, trainer = setup
    prompt = "Check: 1+1=2. Yes or No?"
    base = trainer.s

    def ratio(sample_temp: float, train_temp: float) -> dict:
        spec = SamplingSpec(group_size=8, max_new_tokens=5, temperature=sample_temp, seed=3)
        batch = [Sequence_(s.prompt_ids, s.token_ids, s.logprobs, 1.0) for s in engine.generate([prompt], spec)[0]]
        trainer.s = replace(base, temperature=train_temp)
        try:
            return trainer._micro_loss(batch)[1]
        finally:
            trainer.s = base

    for temp in (0.7, 1.0):
        m = ratio(temp, temp)
        assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
        assert m["clip_frac_low"] == 0.0 and m["clip_frac_high"] == 0.0
    assert abs(ratio(0.5, 1.0)["ratio_mean"] - 1.0) > 1e-3


def test_collapse_monitors_by_hand():
    tasks = [Task("a", "pointwise", "p", "Yes"), Task("b", "pairwise", "p", "B")]
    def row(kind, label, extracted, reward):
        return dict(kind=kind, label=label, extracted=extracted, reward=reward, response_tokens=10, finish_reason="stop")
    rows = [row("pointwise", "Yes", "Yes", 1.0), row("pointwise", "Yes", "Yes", 1.0),  # group 0: all Yes
            row("pairwise", "B", "A", 0.0), row("pairwise", "B", "B", 1.0)]  # group 1: split verdicts
    m = period_metrics(rows, tasks, [0, 0, 1, 1])
    assert m["verdict_yes_share"] == 1.0 and m["verdict_a_share"] == 0.5
    assert m["zero_variance_groups"] == 0.5
    # group 0 entropy 0, group 1 an even split: ln 2; mean ln(2)/2
    assert m["verdict_entropy"] == pytest.approx(0.34657359, abs=1e-6)
    assert m["label_share_Yes"] == 0.5 and m["label_share_B"] == 0.5 and m["label_share_No"] == 0.0
    assert m["pointwise_accuracy"] == 1.0 and m["pairwise_accuracy"] == 0.5
