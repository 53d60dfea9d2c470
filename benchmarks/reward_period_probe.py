"""Does the reward period teach the tiny model to judge? A probe, not a test.

From the shipped checkpoint: each period samples G=8 answers to 32 training problems (no
policy update), recycles them (balanced labels), and runs one reward period on at most 32
judge + 32 reflection prompts. Every 3 periods it measures greedy judge accuracy and verdict
shares on a fixed balanced held-out judge set (60 problems, 120 prompts).
Run: `.venv/bin/python benchmarks/reward_period_probe.py --lr 5e-4 --mini-batch 64 --periods 15`.
"""

from __future__ import annotations

import argparse
import copy
import random
import time


from spark_core.bootstrap import judge_metrics, judge_set
from spark_core.checkpoint import load_checkpoint
from spark_core.config import SparkConfig
from spark_core.periods import groups_for_recycling, judge_tasks, run_period, solve_tasks
from spark_core.problems import generate_problems
from spark_core.recycle import recycle, select_batch
from spark_core.rollout import HFEngine, SamplingSpec
from spark_core.trainer import Trainer, TrainSettings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="data/tiny-model")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--mini-batch", type=int, default=64)
    ap.add_argument("--periods", type=int, default=15)
    ap.add_argument("--beta", type=float, default=0.001)
    ap.add_argument("--reward-temperature", type=float, default=1.0)
    args = ap.parse_args()
    cfg = SparkConfig()
    model, tok = load_checkpoint(args.checkpoint)
    engine = HFEngine(model, tok)
    train, held = generate_problems(cfg.problems, cfg.seed)
    evalset = judge_set(held[:60], 5)
    trainer = Trainer(model, copy.deepcopy(model), TrainSettings(lr=args.lr, mini_batch_size=args.mini_batch,
                                                                 micro_batch_size=64, beta=args.beta), tok.pad_token_id)
    show = lambda m: {k: round(v, 3) for k, v in m.items() if isinstance(v, float)}  # noqa: E731
    print("start", show(judge_metrics(engine, evalset)), flush=True)
    rng, t0 = random.Random(0), time.time()
    for it in range(args.periods):
        tasks = solve_tasks(rng.sample(train, 32))
        rows, _, m = run_period(engine, None, tasks, SamplingSpec(group_size=8, max_new_tokens=48, seed=it), "policy")
        batch = select_batch(recycle(groups_for_recycling(rows, tasks), it, balance_labels=True).rows, 64, True)
        _, _, rm = run_period(engine, trainer, judge_tasks(batch), SamplingSpec(group_size=8, max_new_tokens=96, temperature=args.reward_temperature, seed=100 + it), "reward")
        print(it, f"{time.time() - t0:.0f}s", "solve", round(m["solve_accuracy"], 3), "reward period", show(rm), flush=True)
        if it % 3 == 2:
            jm = judge_metrics(engine, evalset)
            print("   held-out judge", round(jm["judge_accuracy"], 3), jm["judge_verdict_shares"], flush=True)


if __name__ == "__main__":
    main()
