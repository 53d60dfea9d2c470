"""Baselines of a real model before RL: the policy on GSM8K and the synthetic held-out set, and
the model as a judge of its own sampled answers (the numbers the real experiment starts from).

    .venv/bin/python research/real_baselines.py --checkpoint data/models/qwen2.5-coder-0.5b-instruct \
        --out docs/bench/real_baselines_base.json

1. GSM8K: the first `--gsm8k` problems of the shared test file, greedy, `step_by_step` prompt,
   `--gsm8k-tokens` new tokens: accuracy, boxed share, no-answer share (format failures).
2. Synthetic held-out (configs/qwen2.5-coder-0.5b-cpu.yaml's split): the same with the config's
   solve prompt and lengths.
3. Own-answer judge set: `--judge-problems` held-out synthetic problems, 4 answers each at T=1,
   verified, made into the balanced reward benchmark the evaluate stage uses (paper templates,
   answer shown), judged greedily: accuracy over all items and over parsed ones, parse rate,
   AUROC of the verdict log-odds, share of `Yes`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "qwen2.5-coder-0.5b-cpu.yaml")
    ap.add_argument("--gsm8k", type=int, default=100)
    ap.add_argument("--gsm8k-tokens", type=int, default=320)
    ap.add_argument("--synthetic", type=int, default=100)
    ap.add_argument("--judge-problems", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    import torch

    from spark_core.config import load_config
    from spark_core.evaluation.evaluate import build_judge_set, policy_metrics, run_judge_set, sample_groups
    from spark_core.evaluation.evaluate_file import benchmark_problems
    from spark_core.model.rollout import HFEngine

    torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    r = cfg.rollout
    engine = HFEngine(a.checkpoint, device="cpu", dtype="float32", system=cfg.prompts.system)
    out: dict = {"checkpoint": str(a.checkpoint), "config": str(a.config), "date": time.strftime("%Y-%m-%d")}

    def timed(name, fn):
        t = time.monotonic()
        res = fn()
        out[f"{name}_seconds"] = round(time.monotonic() - t, 1)
        shown = res[0] if isinstance(res, tuple) else res  # policy_metrics and run_judge_set return (metrics, rows)
        print(name, f"{out[f'{name}_seconds']}s", json.dumps(shown, default=str) if isinstance(shown, dict) else "", flush=True)
        return res

    if a.gsm8k:
        gsm = benchmark_problems("gsm8k", cfg)[: a.gsm8k]
        m, _ = timed("gsm8k", lambda: policy_metrics(engine, gsm, 0, a.gsm8k_tokens, cfg.seed, "step_by_step"))
        out["gsm8k"] = m | {"n": len(gsm), "prompt": "step_by_step", "max_new_tokens": a.gsm8k_tokens}
    held = benchmark_problems("synthetic", cfg)
    if a.synthetic:
        m, _ = timed("synthetic", lambda: policy_metrics(engine, held[: a.synthetic], 0, r.max_new_tokens, cfg.seed,
                                                         cfg.prompts.solve))
        out["synthetic"] = m | {"n": min(a.synthetic, len(held)), "prompt": cfg.prompts.solve, "max_new_tokens": r.max_new_tokens}
    if a.judge_problems:
        groups = timed("judge_samples", lambda: sample_groups(engine, held[: a.judge_problems], 4, r.max_new_tokens,
                                                             cfg.seed + 17, cfg.prompts.solve))
        items = build_judge_set(groups, cfg.seed, "paper", "answer")
        m, rows = timed("judge", lambda: run_judge_set(engine, items, r.judge_max_new_tokens))
        out["own_answer_judge"] = {k: v for k, v in m.items()} | {
            "items": len(items), "answers_correct": sum(x.correct for g in groups for x in g) / max(1, sum(map(len, groups)))}
        out["own_answer_judge_examples"] = [{k: row[k] for k in ("kind", "label", "response", "verdict", "logodds")}
                                            for row in rows[:6]]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
