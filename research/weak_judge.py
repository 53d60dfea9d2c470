"""Give the tiny model a weak judge: continue its SFT with verdict labels that are right with
probability p (0.5 is the shipped model: a judge with no skill at all).

A probe for the SPARK-core question "can reward periods teach judging": RL did not move a
judge whose verdict ignores its own trace (docs/research/weak-judge.md); real base models start
with some judging skill. This writes a checkpoint and prints its solve accuracy and its judge
metrics on a reward benchmark built like the pipeline's (its own sampled answers to held-out
problems): accuracy, verdict shares and AUROC.

Run: `.venv/bin/python research/weak_judge.py --p 0.7 --steps 200 --out /tmp/weak-judge`
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_core.model.bootstrap import train_sft  # noqa: E402
from spark_core.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from spark_core.config import load_config  # noqa: E402
from spark_core.evaluation.evaluate import build_judge_set, policy_metrics, run_judge_set, sample_groups  # noqa: E402
from spark_core.data.problems import fresh_problems, generate_problems  # noqa: E402
from spark_core.model.rollout import HFEngine  # noqa: E402


def report(model, tok, held, seed=0, device="cpu") -> dict:
    engine = HFEngine(model, tok, device=device)
    m, _ = policy_metrics(engine, held[:100], 0, 48, seed)
    items = build_judge_set(sample_groups(engine, held[:100], 4, 48, seed + 17), seed)
    jm, _ = run_judge_set(engine, items, 96)
    return m | {k: jm[k] for k in ("judge_accuracy", "judge_auroc", "pointwise_accuracy", "pairwise_accuracy",
                                   "verdict_share_yes", "verdict_share_a_pairwise", "reflection_accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", default=str(ROOT / "data" / "tiny-model"))
    ap.add_argument("--p", type=float, default=0.7, help="probability that an SFT verdict is the true one")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", choices=("forward", "inverse"), default="forward",
                    help="judge traces check by re-solving, or by the inverse computation")
    ap.add_argument("--pool", type=int, default=None, metavar="SEED",
                    help="SFT on a fresh synthetic pool (this generator seed) minus the run's training "
                         "problems, so the RL run's problems stay unseen")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda")
    a = ap.parse_args()
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    train, held = generate_problems(cfg.problems, cfg.seed)
    if a.pool is not None:
        train = fresh_problems(cfg.problems, a.pool, cfg.seed)
    model, tok = load_checkpoint(a.source)
    model.to(a.device)
    print("before", {k: round(v, 3) for k, v in report(model, tok, held, device=a.device).items() if v is not None}, flush=True)
    s = cfg.bootstrap.model_copy(update={"lr": a.lr, "warmup_steps": 20, "judge_check": a.check})
    start = time.monotonic()
    train_sft(model, tok, train, s, random.Random(a.seed), a.p, stop=lambda step, secs: step >= a.steps)
    model.eval()
    print(f"SFT {a.steps} steps at p={a.p}, lr {a.lr}, {a.check} check: {time.monotonic() - start:.0f}s", flush=True)
    print("after", {k: round(v, 3) for k, v in report(model, tok, held, device=a.device).items() if v is not None}, flush=True)
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    save_checkpoint(model, tok, out)
    meta = {"from": a.source, "p": a.p, "steps": a.steps, "lr": a.lr, "seed": a.seed, "check": a.check, "pool": a.pool}
    (out / "weak_judge.json").write_text(json.dumps(meta) + "\n")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
