"""Learning on the shipped tiny model, not a mock: policy periods raise solve reward."""

import copy
import random
from pathlib import Path

import torch

from spark_core.checkpoint import load_checkpoint
from spark_core.config import load_config
from spark_core.periods import run_period, solve_tasks
from spark_core.problems import generate_problems
from spark_core.rollout import HFEngine, SamplingSpec
from spark_core.trainer import Trainer, TrainSettings

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
