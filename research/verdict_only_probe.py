"""Probe: train judge samples on their verdict tokens only, to test the dilution hypothesis.

Under token-mean aggregation a judge response's verdict is one token of about 40 and the same
advantage lands on its recomputation tokens. Here each pointwise/pairwise sample is cut at its
last `\\boxed{`: what precedes becomes context (no loss) and only the verdict and what follows
are trained; reflection samples train whole. Reward periods only (no policy update), judge
data recycled with label balance from the model's own answers, as the `grpo_reward` arm but
from the current model. Prints held-out judge accuracy, AUROC, verdict shares and mean
P(`Yes`) by trace type every 2 iterations, for `--modes verdict full centered`: verdict tokens
only, whole responses (control), whole responses with the advantage centred per verdict.

Byte-level tokenizer only (the tiny model): token offsets are byte offsets.
Run: `.venv/bin/python research/verdict_only_probe.py --checkpoint /tmp/weak-judge-70 --iterations 8`
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_core.model.checkpoint import load_checkpoint  # noqa: E402
from spark_core.config import load_config  # noqa: E402
from spark_core.evaluation.evaluate import build_judge_set, run_judge_set, sample_groups  # noqa: E402
from spark_core.rundir import policy_problems  # noqa: E402
from spark_core.periods import groups_for_recycling, judge_tasks, score, solve_tasks  # noqa: E402
from spark_core.data.problems import generate_problems  # noqa: E402
from spark_core.judge.recycle import recycle, select_batch  # noqa: E402
from spark_core.model.rollout import HFEngine, SamplingSpec  # noqa: E402
from spark_core.model.trainer import Sequence_, Trainer, TrainSettings  # noqa: E402

BOX = list("\\boxed{".encode())


def cut_at_verdict(s) -> Sequence_ | None:
    """(prompt + trace up to `\\boxed{`) as context, the verdict onwards as the response."""
    ids = s.token_ids
    for i in range(len(ids) - len(BOX), -1, -1):
        if ids[i : i + len(BOX)] == BOX:
            j = i + len(BOX)
            if j >= len(ids):
                return None
            return Sequence_(s.prompt_ids + ids[:j], ids[j:], s.logprobs[j:], 0.0)
    return None


def trace_table(rows) -> str:
    cells = defaultdict(list)
    for r in rows:
        if r["kind"] != "pointwise" or r["wording"] != "yes_no" or r["logodds"] is None:
            continue
        cmp = r["response"].split(":")[-1] if ":" in r["response"] else ""
        eq = "#" not in cmp and "=" in cmp
        cells[(eq, r["candidate_correct"])].append(1 / (1 + math.exp(-r["logodds"])))
    return "  ".join(f"{'eq' if eq else 'df'}/{'ok' if ok else 'bad'} {sum(v) / len(v):.2f}"
                     for (eq, ok), v in sorted(cells.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--modes", nargs="+", default=["verdict", "full"])
    ap.add_argument("--beta", type=float, default=0.001, help="k3 KL coefficient to the starting checkpoint")
    a = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    train, held = generate_problems(cfg.problems, cfg.seed)
    base, tok = load_checkpoint(a.checkpoint)
    items = build_judge_set(sample_groups(HFEngine(base, tok, device="cpu"), held[:100], 4, 48, 17), 0)
    for mode in a.modes:
        torch.manual_seed(0)
        model, tok = load_checkpoint(a.checkpoint)
        ref, _ = load_checkpoint(a.checkpoint)
        engine = HFEngine(model, tok, device="cpu")
        trainer = Trainer(model, ref, TrainSettings(lr=a.lr, mini_batch_size=64, micro_batch_size=64, beta=a.beta),
                          tok.pad_token_id, torch.device("cpu"))
        for k in range(a.iterations + 1):
            if k % 2 == 0:
                m, rows = run_judge_set(engine, items, 96)
                print(f"{mode:8} it {k}: judge {m['judge_accuracy']:.3f} AUROC {m['judge_auroc']:.3f} "
                      f"yes {m['verdict_share_yes']:.2f} A(pair) {m['verdict_share_a_pairwise']:.2f} "
                      f"reflection {m['reflection_accuracy']:.2f} | P(Yes) {trace_table(rows)}", flush=True)
            if k == a.iterations:
                break
            tasks = solve_tasks(policy_problems(cfg, train, k))
            groups = engine.generate([t.prompt for t in tasks], SamplingSpec(8, 1.0, 1.0, 48, seed=2 * k))
            rows, _, _ = score(tasks, groups, "policy")
            made = recycle(groups_for_recycling(rows, tasks), cfg.seed, balance_labels=True, salt=f"{k}")
            jt = judge_tasks(select_batch(made.rows, 32, True))
            jgroups = engine.generate([t.prompt for t in jt], SamplingSpec(8, 1.0, 1.0, 96, seed=2 * k + 1))
            jrows, _, _ = score(jt, jgroups, "reward")
            if mode == "centered":
                # Remove the verdict's main effect: within the batch, the advantages of all samples
                # that gave the same verdict (on the same kind) sum to zero, so the update cannot
                # move the verdict's prior, only its dependence on the trace.
                by = defaultdict(list)
                for r in jrows:
                    if r["kind"] != "reflection":
                        by[(r["kind"], (r["extracted"] or "").strip().casefold())].append(r)
                for rs in by.values():
                    mean = sum(r["advantage"] for r in rs) / len(rs)
                    for r in rs:
                        r["advantage"] -= mean
            batch = []
            for s, r in zip((s for g in jgroups for s in g), jrows):
                if not s.token_ids:
                    continue
                if mode == "verdict" and r["kind"] != "reflection":
                    cut = cut_at_verdict(s)
                    if cut is None:
                        continue
                    cut.advantage = r["advantage"]
                    batch.append(cut)
                else:
                    batch.append(Sequence_(s.prompt_ids, s.token_ids, s.logprobs, r["advantage"]))
            trainer.train_period(batch, "reward")


if __name__ == "__main__":
    main()
