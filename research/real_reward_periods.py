"""Does a real model's judge improve under reward periods? (issue 16 C) A probe, not a test.

Qwen2.5-Coder-0.5B-Instruct, on this CPU, `configs/qwen2.5-coder-0.5b-reward-periods.yaml`
(`spark.mode: reward_only`): each iteration samples the start model's own answers to 4 training
problems, recycles them into balanced judge and reflection prompts and runs one reward period
(no policy update). Arms, one run directory each under ROOT:

- `hard`: the verifier's 0/1 judge reward (the config as written; its iteration 0 runs the
  format warm-up, and every other arm starts from that warm-up checkpoint, warm-up off, so all
  arms share the start model, its KL anchor, the held-out judge set and the recycled data);
- `weighted`: `spark.label_weighting: inv_sqrt_ema` (the option the tiny-model probe picked,
  docs/research/judge-rewards.md); `expected`: `spark.judge_reward: expected` (on request);
  `format`: `spark.format_penalty: 0.5` (an out-of-format verdict scores below a wrong one);
- `start`: the warm-up checkpoint itself, evaluated once (period 0).

The judge is measured every `eval.every` periods on the held-out balanced set of the start
model's own answers (accuracy, parse rate, accuracy over parsed verdicts, AUROC of the verdict
log-odds, per kind). Writes OUT/reward_periods.parquet (one row per arm and measured period)
and OUT/reward_periods.md. Resumable: a killed run continues where it stopped.

Run: `.venv/bin/python research/real_reward_periods.py --periods 10` (about 90 minutes here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_core.config import SparkConfig, load_config
from spark_core.data.store import read_manifest, read_table

OPTIONS = {"hard": {}, "weighted": {"label_weighting": "inv_sqrt_ema"}, "expected": {"judge_reward": "expected"},
           "format": {"format_penalty": 0.5}}
SHOWN = ("judge_accuracy", "judge_parse_rate", "judge_accuracy_parsed", "judge_auroc", "pointwise_accuracy",
         "pairwise_accuracy", "reflection_accuracy", "verdict_share_yes", "verdict_share_a_pairwise")


def arm_config(first: SparkConfig, arm: str, warm: Path | None) -> SparkConfig:
    """The first arm's config, or another arm's: its option, starting from `warm` with no warm-up."""
    data = first.resolved()
    data["spark"] |= OPTIONS[arm]
    if warm is not None:
        data["model"]["path"] = str(warm.resolve())
        data["warmup"]["enabled"] = False
    return SparkConfig.model_validate(data)


def run_arm(cfg: SparkConfig, run_dir: Path, periods: int) -> float:
    from spark_core.iteration import run_iteration
    from spark_core.rundir import claim_run, completed_iterations
    from spark_core.runlock import run_lock
    from spark_core.stages.problems import prepare_problems

    start = time.monotonic()
    with run_lock(run_dir):
        claim_run(cfg, run_dir)
        prepare_problems(cfg, run_dir)
        for k in range(completed_iterations(run_dir, cfg), periods):
            run_iteration(cfg, run_dir, k)
            print(f"  {run_dir.name}: period {k + 1}/{periods} done, {time.monotonic() - start:.0f} s", flush=True)
    return time.monotonic() - start


def judge_set_digest(run_dir: Path) -> str:
    from spark_core.stages.evaluate import judge_set_path

    rows = pq.read_table(judge_set_path(run_dir)).select(["item_id", "prompt", "label"]).to_pylist()
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def arm_rows(arm: str, run_dir: Path) -> list[dict]:
    evals = read_table(run_dir, "evals").to_pylist()
    updates = [u for u in read_table(run_dir, "updates").to_pylist() if not u["skipped"]]
    out = []
    for k in sorted({r["iteration"] for r in evals}):
        m = {r["metric"]: r["value"] for r in evals if r["iteration"] == k}
        # The reward period's own verdicts (training rollouts), worst of the periods up to k.
        trained = [read_manifest(run_dir, "iteration", i)["metrics"].get("reward/verdict_parse_rate") for i in range(k + 1)]
        trained = [v for v in trained if v is not None]
        out.append({"arm": arm, "period": k + 1, "optimizer_steps": sum(u["iteration"] <= k for u in updates)}
                   | {key: m.get(key) for key in SHOWN}
                   | {"rollout_parse_rate_min": min(trained) if trained else None})
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    head = ["arm", "period", "optimizer_steps", *SHOWN, "rollout_parse_rate_min"]
    fmt = lambda v: "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["# Reward periods on Qwen2.5-Coder-0.5B-Instruct's own answers", "",
             f"Command: `{meta['command']}`; {meta['machine']}; {meta['date']}.", "",
             f"Held-out judge set: {meta['judge_items']} items (digest {meta['judge_set_digest']}, the same in "
             f"every arm: {meta['same_judge_set']}). Arm wall times (s): {meta['seconds']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/qwen2.5-coder-0.5b-reward-periods.yaml")
    ap.add_argument("--periods", type=int, default=10, help="reward periods per arm")
    ap.add_argument("--arm", action="append", choices=tuple(OPTIONS), help="arms after `hard` (default: weighted)")
    ap.add_argument("--root", default="data/real-reward-periods", help="run directories")
    ap.add_argument("--out", default="docs/real-model", help="where reward_periods.{parquet,md} go")
    ap.add_argument("--lr", type=float, help="train.lr for every arm (default: the config's)")
    ap.add_argument("--machine", help="where it ran (default: read from this machine)")
    args = ap.parse_args()
    from spark_core.machine import describe
    from spark_core.experiment import run_base
    from spark_core.rundir import start_model
    from spark_core.stages.evaluate import judge_set_stage
    from spark_core.runlock import run_lock

    root, out = Path(args.root), Path(args.out)
    first = load_config(args.config)
    if args.lr is not None:
        data = first.resolved()
        data["train"]["lr"] = args.lr
        first = SparkConfig.model_validate(data)
    arms = ["hard"] + [a for a in (args.arm or ["weighted"]) if a != "hard"]
    seconds, rows = {}, []
    seconds["hard"] = run_arm(first, root / "hard", args.periods)
    warm = start_model(first, root / "hard") if first.warmup.enabled else None
    start_cfg = arm_config(first, "hard", warm)
    t0 = time.monotonic()
    with run_lock(root / "start"):
        m = run_base(start_cfg, root / "start")
    seconds["start"] = time.monotonic() - t0
    rows.append({"arm": "start", "period": 0, "optimizer_steps": 0} | {k: m.get(k) for k in SHOWN}
                | {"rollout_parse_rate_min": None})
    for arm in arms[1:]:
        seconds[arm] = run_arm(arm_config(first, arm, warm), root / arm, args.periods)
    for arm in arms:
        rows += arm_rows(arm, root / arm)
    digests = {a: judge_set_digest(root / a) for a in ["start", *arms]}
    meta = {"command": "python research/real_reward_periods.py " + " ".join(sys.argv[1:]),
            "machine": args.machine or f"{describe()}, rollout {first.rollout.dtype}, "
            f"bf16 autocast {first.train.bf16_autocast}", "date": time.strftime("%Y-%m-%d"),
            "judge_items": len(judge_set_stage(start_cfg, root / "start")), "judge_set_digest": digests["start"],
            "same_judge_set": len(set(digests.values())) == 1, "seconds": {k: round(v) for k, v in seconds.items()}}
    out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({"spark": json.dumps(meta)})
    pq.write_table(table, out / "reward_periods.parquet")
    (out / "reward_periods.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
