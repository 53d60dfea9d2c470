"""How often do reward periods lift the weak judge? The learning test's loop over several draws.

`tests/test_learning.py::test_reward_periods_raise_judge_accuracy_from_a_weak_judge` runs one
draw (problems drawn with random.Random(0), sampling seeds 100 + i). On one CI machine it
gained nothing (0.56 -> 0.54) where this machine gained 0.15: the trajectory depends on the
floating-point path. This probe keeps the weak judge (the same 200 SFT steps) and repeats the
9 reward periods from a copy of it for several draws, and for more periods, to see how often
the gain clears the test's bar. A probe, not a test.

    .venv/bin/python research/weak_judge_draws.py --draws 0 1 2 3 --periods 9 15
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path

import torch

from spark_core.model.bootstrap import judge_metrics, judge_set, near_miss_rollouts, train_sft
from spark_core.model.checkpoint import load_checkpoint
from spark_core.config import load_config
from spark_core.periods import judge_tasks, run_period
from spark_core.data.problems import generate_problems
from spark_core.judge.recycle import recycle, select_batch
from spark_core.model.rollout import HFEngine, SamplingSpec
from spark_core.model.trainer import Trainer, TrainSettings

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--periods", type=int, nargs="+", default=[9], help="report after these many periods")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    a = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    train, held = generate_problems(cfg.problems, cfg.seed)
    model, tok = load_checkpoint(ROOT / cfg.model.path)
    torch.manual_seed(0)
    sft = cfg.bootstrap.model_copy(update={"lr": 5e-4, "warmup_steps": 20})
    train_sft(model, tok, train, sft, random.Random(0), 0.7, stop=lambda step, secs: step >= 200)
    model.eval()
    held_judge = judge_set(held[:100], 5)
    before = judge_metrics(HFEngine(model, tok, device="cpu"), held_judge)
    print(f"weak judge: acc {before['judge_accuracy']:.3f} pairwise {before['judge_pairwise_accuracy']:.3f} "
          f"shares {before['judge_verdict_shares']}", flush=True)
    for d in a.draws:
        m = copy.deepcopy(model)
        engine = HFEngine(m, tok, device="cpu")
        trainer = Trainer(m, copy.deepcopy(m), TrainSettings(lr=a.lr, mini_batch_size=64, micro_batch_size=64),
                          tok.pad_token_id, torch.device("cpu"))
        rng = random.Random(d)
        start = time.time()
        for i in range(max(a.periods)):
            problems = rng.sample(train, 32)
            rows = recycle(near_miss_rollouts(problems, rng), i, balance_labels=True).rows
            batch = select_batch(rows, 64, True)
            run_period(engine, trainer, judge_tasks(batch), SamplingSpec(group_size=a.group, max_new_tokens=96,
                                                                         seed=100 + 1000 * d + i), "reward")
            if i + 1 in a.periods:
                after = judge_metrics(engine, held_judge)
                shares = after["judge_verdict_shares"]
                print(f"draw {d} after {i + 1}: acc {after['judge_accuracy']:.3f} "
                      f"(gain {after['judge_accuracy'] - before['judge_accuracy']:+.3f}) pairwise "
                      f"{after['judge_pairwise_accuracy']:.3f} max share {max(shares.values()):.2f} "
                      f"({time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
