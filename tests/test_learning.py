"""Learning on the shipped tiny model, not a mock: policy periods raise solve reward, reward
periods raise judge accuracy."""

import copy
import random
from pathlib import Path

import torch

from spark_core.model.bootstrap import judge_metrics, judge_set, near_miss_rollouts, train_sft
from spark_core.model.checkpoint import load_checkpoint
from spark_core.config import load_config
from spark_core.periods import judge_tasks, run_period, solve_tasks
from spark_core.data.problems import generate_problems
from spark_core.judge.recycle import recycle, select_batch
from spark_core.model.rollout import HFEngine, SamplingSpec
from spark_core.model.trainer import Trainer, TrainSettings

ROOT = Path(__file__).resolve().parents[1]


def test_policy_periods_raise_mean_reward_on_the_tiny_model():
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    model, tok = load_checkpoint(ROOT / cfg.model.path)
    torch.manual_seed(0)
    engine = HFEngine(model, tok, device="cpu")
    trainer = Trainer(model, copy.deepcopy(model), TrainSettings(lr=1e-4, mini_batch_size=64, micro_batch_size=64),
                      tok.pad_token_id, torch.device("cpu"))
    train, held = generate_problems(cfg.problems, cfg.seed)
    held_tasks = solve_tasks(held[:100])
    spec = SamplingSpec(group_size=4, max_new_tokens=32, seed=11)

    def held_out_reward() -> float:
        return run_period(engine, None, held_tasks, spec, "eval")[2]["reward_mean"]

    before = held_out_reward()
    rng = random.Random(0)
    for i in range(9):
        tasks = solve_tasks(rng.sample(train, 32))
        run_period(engine, trainer, tasks, SamplingSpec(group_size=8, max_new_tokens=32, seed=i), "policy")
    after = held_out_reward()
    # 400 held-out samples: a gain of 0.08 is ~3 binomial standard deviations (measured: 0.49 -> 0.60).
    # At lr 5e-4 the same loop lost reward (0.49 -> 0.40): this tiny model wants a small step.
    assert after > before + 0.08, (before, after)


def test_reward_periods_raise_judge_accuracy_from_a_weak_judge():
    """Reward periods on the tiny model, not a mock: judge accuracy rises, verdicts stay mixed.

    The start is a weak judge (the shipped model's SFT continued 200 steps with verdicts right
    70% of the time, as `research/weak_judge.py`): its verdict barely follows its own
    digit-by-digit comparison. The judge data is recycled by the real rules (balanced labels)
    from made-up rollout groups whose wrong answers are near misses, because the model's own
    errors are systematic and its re-solve repeats them (a self-check of its own answers tops
    out near 0.73, docs/research/self-check-ceiling.md). From the same weak judge, three draws
    of 9 periods each (problems and sampling seeds per draw). Measured here
    (`research/weak_judge_draws.py`, 2026-12-02): 0.565 -> 0.715 / 0.675 / 0.655 (a fourth
    draw 0.700); on one CI machine the first draw gained nothing (0.56 -> 0.54, its pairwise
    verdicts stuck on `A`): one draw's trajectory depends on the floating-point path, so the
    claim is about draws, not one. From a 100-step weak judge, or from the shipped model (no
    skill), the same periods teach nothing.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the figures above were measured with 2; other counts round differently
    try:
        cfg = load_config(ROOT / "configs" / "tiny.yaml")
        train, held = generate_problems(cfg.problems, cfg.seed)
        weak, tok = load_checkpoint(ROOT / cfg.model.path)
        torch.manual_seed(0)
        sft = cfg.bootstrap.model_copy(update={"lr": 5e-4, "warmup_steps": 20})
        train_sft(weak, tok, train, sft, random.Random(0), 0.7, stop=lambda step, secs: step >= 200)
        weak.eval()
        held_judge = judge_set(held[:100], 5)  # 100 pointwise + 100 pairwise, balanced, near-miss candidates
        before = judge_metrics(HFEngine(weak, tok, device="cpu"), held_judge)
        afters = []
        for draw in range(3):
            model = copy.deepcopy(weak)
            engine = HFEngine(model, tok, device="cpu")
            trainer = Trainer(model, copy.deepcopy(model), TrainSettings(lr=3e-4, mini_batch_size=64, micro_batch_size=64),
                              tok.pad_token_id, torch.device("cpu"))
            rng = random.Random(draw)
            for i in range(9):
                problems = rng.sample(train, 32)
                rows = recycle(near_miss_rollouts(problems, rng), i, balance_labels=True).rows
                batch = select_batch(rows, 64, True)  # at most 32 judge + 32 reflection prompts
                run_period(engine, trainer, judge_tasks(batch),
                           SamplingSpec(group_size=8, max_new_tokens=96, seed=100 + 1000 * draw + i), "reward")
            afters.append(judge_metrics(engine, held_judge))
    finally:
        torch.set_num_threads(threads)
    print("judge before", before, "\njudge after", afters)  # shown with pytest -s
    gains = [a["judge_accuracy"] - before["judge_accuracy"] for a in afters]
    # 200 prompts per measurement: a binomial sd of about 0.035 each. Measured gains +0.09 to
    # +0.15 (mean +0.117); the one CI trajectory that failed had -0.02.
    assert sum(gains) / 3 > 0.05 and sum(g > 0.03 for g in gains) >= 2, (before, afters)
    mixed = [max(a["judge_verdict_shares"].values()) < 0.7 and a["judge_parse_rate"] > 0.95 for a in afters]
    assert sum(mixed) >= 2, afters  # not a constant verdict
    pairwise = sum(a["judge_pairwise_accuracy"] for a in afters) / 3
    assert pairwise > before["judge_pairwise_accuracy"], (before, afters)
