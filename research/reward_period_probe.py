"""Does the reward period teach the tiny model to judge? A probe, not a test.

From the shipped checkpoint: each period samples G=8 answers to 32 training problems (no
policy update), recycles them (balanced labels), and runs one reward period on at most 32
judge + 32 reflection prompts. Every 3 periods it measures greedy judge accuracy and verdict
shares on a fixed balanced held-out judge set (60 problems, 120 prompts).
Run: `.venv/bin/python research/reward_period_probe.py --lr 5e-4 --mini-batch 64 --periods 15`.
"""

from __future__ import annotations

import argparse
import copy
import random
import time

from spark_core.model.bootstrap import judge_metrics, judge_set, near_miss_rollouts
from spark_core.model.checkpoint import load_checkpoint
from spark_core.config import SparkConfig
from spark_core.evaluation.evaluate import build_judge_set, run_judge_set, sample_groups
from spark_core.periods import (
    groups_for_recycling,
    judge_tasks,
    run_period,
    solve_tasks,
)
from spark_core.data.problems import fresh_problems, generate_problems
from spark_core.judge.recycle import recycle, select_batch
from spark_core.model.rollout import HFEngine, SamplingSpec
from spark_core.model.trainer import Trainer, TrainSettings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="data/tiny-model")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--mini-batch", type=int, default=64)
    ap.add_argument("--periods", type=int, default=15)
    ap.add_argument("--beta", type=float, default=0.001)
    ap.add_argument("--reward-temperature", type=float, default=1.0)
    ap.add_argument("--cache", choices=("own", "near-miss"), default="own",
                    help="recycle the model's own answers, or made-up ones: right or a near miss, half and half")
    ap.add_argument("--every", type=int, default=3, help="measure the held-out judge every this many periods")
    ap.add_argument("--eval-problems", type=int, default=60, help="held-out judge set: 2 prompts per problem")
    ap.add_argument("--seed", type=int, default=0, help="problem draws and made-up answers")
    ap.add_argument("--eval", choices=("near-miss", "own"), default="near-miss",
                    help="held-out judge set: made-up near misses, or the starting model's own answers "
                         "(the pipeline's reward benchmark, with AUROC)")
    ap.add_argument("--fresh", type=int, default=None, metavar="SEED",
                    help="draw the periods' problems from a fresh synthetic pool (this generator seed), "
                         "minus the training and held-out problems: ones the model never trained on")
    args = ap.parse_args()
    cfg = SparkConfig()
    model, tok = load_checkpoint(args.checkpoint)
    engine = HFEngine(model, tok)
    train, held = generate_problems(cfg.problems, cfg.seed)
    if args.fresh is not None:
        train = fresh_problems(cfg.problems, args.fresh, cfg.seed)
        print(f"fresh pool: {len(train)} problems (seed {args.fresh})")
    if args.eval == "own":
        own = build_judge_set(sample_groups(engine, held[: args.eval_problems], 4, 48, 17), 0)

        def measure() -> dict:
            m = run_judge_set(engine, own, 96)[0]
            return {k: m[k] for k in ("judge_accuracy", "judge_auroc", "pointwise_accuracy", "pairwise_accuracy",
                                      "verdict_share_yes", "verdict_share_a_pairwise", "reflection_accuracy")} | {
                "judge_verdict_shares": {}}
    else:
        evalset = judge_set(held[: args.eval_problems], 5)

        def measure() -> dict:
            return judge_metrics(engine, evalset)
    trainer = Trainer(model, copy.deepcopy(model), TrainSettings(lr=args.lr, mini_batch_size=args.mini_batch,
                                                                 micro_batch_size=64, beta=args.beta), tok.pad_token_id)
    show = lambda m: {k: round(v, 3) for k, v in m.items() if isinstance(v, float)}
    print("start", show(measure()), flush=True)
    rng, t0 = random.Random(args.seed), time.time()
    for it in range(args.periods):
        problems = rng.sample(train, 32)
        tasks = solve_tasks(problems)
        if args.cache == "own":
            rows, _, m = run_period(engine, None, tasks, SamplingSpec(group_size=8, max_new_tokens=48, seed=it), "policy")
            groups = groups_for_recycling(rows, tasks)
        else:
            groups, m = near_miss_rollouts(problems, rng), {"solve_accuracy": float("nan")}
        batch = select_batch(recycle(groups, it, balance_labels=True).rows, 64, True)
        _, _, rm = run_period(engine, trainer, judge_tasks(batch), SamplingSpec(group_size=8, max_new_tokens=96, temperature=args.reward_temperature, seed=100 + it), "reward")
        print(it, f"{time.time() - t0:.0f}s", "solve", round(m["solve_accuracy"], 3), "reward period", show(rm), flush=True)
        if it % args.every == args.every - 1:
            jm = measure()
            print("   held-out judge", show(jm), {k: round(v, 2) for k, v in jm["judge_verdict_shares"].items()}, flush=True)


if __name__ == "__main__":
    main()
