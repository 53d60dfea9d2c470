"""Greedy accuracy and boxed share of checkpoints on a config's held-out problems (issue 27/31 probe):
does the format warm-up keep the base model's arithmetic?

    .venv/bin/python research/greedy_accuracy.py -c configs/qwen2.5-coder-0.5b-cpu.yaml --n 32 CKPT [CKPT ...]

The held-out problems are the config's (`problems`, `seed`), the first N; prompts through the
config's solve prompt and system message; `rollout.max_new_tokens`; the engine's dtype as configured.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from spark_core.config import load_config
from spark_core.data.problems import problem_sets
from spark_core.data.prompts import solve_prompt
from spark_core.evaluation.evaluate import greedy
from spark_core.model.rollout import HFEngine
from spark_core.verify import extract_answer, verify_response


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("checkpoints", nargs="+")
    a = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(a.config)
    held = problem_sets(cfg.problems, cfg.seed)[1][: a.n]
    prompts = [solve_prompt(cfg.prompts.solve, p.question) for p in held]
    for path in a.checkpoints:
        engine = HFEngine(path, device=cfg.rollout.device, dtype=cfg.rollout.dtype, system=cfg.prompts.system)
        answers = greedy(engine, prompts, cfg.rollout.max_new_tokens)
        right = [bool(verify_response(t, p.answer).correct) for t, p in zip(answers, held)]
        rules = Counter(extract_answer(t).rule for t in answers)
        openings = Counter(t.strip().split("\n")[0][:40] for t in answers).most_common(1)[0]
        print(f"{path}: greedy accuracy {sum(right)}/{len(held)} = {sum(right) / len(held):.3f}, "
              f"boxed {rules.get('boxed', 0) / len(held):.3f}, commonest first line {openings[0]!r} x{openings[1]}",
              flush=True)
        engine.close()


if __name__ == "__main__":
    main()
