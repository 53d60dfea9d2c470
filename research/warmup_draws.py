"""Is the format warm-up made through vLLM worse, or was it one bad draw? (issue 32)

One session made the CPU config's warm-up once per engine: HF reached boxed 1.00 / verdicts
1.00 after it, vLLM 0.625 / 0.875. This probe makes the warm-up of one config for several
seeds with each engine (the real warm-up stage, `spark_core/stages/warmup.py`, into a scratch
folder) and then samples every warm-up checkpoint with *both* engines on the warm-up's own solve
prompts, `--check-group` samples each, so that "the checkpoint is worse" and "the engine samples
it differently" can be told apart. One row per (engine that made it, seed); each warm-up's
checkpoint is deleted once it is measured (2 GB each), unless `--keep`.

    .venv/bin/python research/warmup_draws.py -c configs/qwen2.5-coder-0.5b-cpu.yaml --seeds 0 1 2

About 3 minutes per HF warm-up and 5 per vLLM warm-up here, plus 1.5 per cross-check.
Writes docs/research/warmup-draws.json (rows) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("solve_boxed_before", "solve_boxed_after", "judge_parsed_before", "judge_parsed_after",
           "sft_loss_first", "sft_loss_last")


def cross_check(cfg, checkpoint: Path, tasks, group: int, seed: int) -> dict:
    """Boxed share, accuracy, stop share and mean tokens of `group` samples per solve task, per engine."""
    from spark_core.model.rollout import SamplingSpec
    from spark_core.model.warmup import strict_parsed
    from spark_core.rundir import open_engine
    from spark_core.verify import verify_response

    r = cfg.rollout
    spec = SamplingSpec(group, r.temperature, r.top_p, r.max_new_tokens, seed=seed)
    out = {}
    for engine in ("hf", "vllm"):
        c = cfg.model_copy(update={"rollout": r.model_copy(update={"engine": engine})})
        with open_engine(c, checkpoint, seed) as eng:
            groups = eng.generate([t.prompt for t in tasks], spec)
        rows = [(t, s) for t, g in zip(tasks, groups) for s in g]
        out[engine] = {
            "boxed": sum(strict_parsed(t, s.text) for t, s in rows) / len(rows),
            "accuracy": sum(verify_response(s.text, t.label).correct for t, s in rows) / len(rows),
            "stopped": sum(s.finish_reason == "stop" for _, s in rows) / len(rows),
            "tokens": statistics.mean(len(s.token_ids) for _, s in rows),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "configs/qwen2.5-coder-0.5b-cpu.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"])
    ap.add_argument("--check-group", type=int, default=4, help="samples per solve prompt in the cross-check")
    ap.add_argument("--keep", action="store_true",
                    help="make the warm-ups where runs look for them (beside the model) and keep them, for a later `spark iterate`")
    ap.add_argument("--out", default=str(ROOT / "docs/research/warmup-draws.json"))
    ap.add_argument("--warmup", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override warm-up fields of the config (e.g. answer_budget=0.5 judge_prompts=24)")
    a = ap.parse_args()

    import pyarrow.parquet as pq

    from spark_core.config import load_config
    from spark_core.model import warmup
    from spark_core.periods import solve_tasks
    from spark_core.rundir import problems_of
    from spark_core.stages.problems import prepare_problems
    from spark_core.stages.warmup import warmup_stage

    base_cfg = load_config(a.config)
    if a.warmup:
        import yaml

        over = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.warmup)}
        base_cfg = base_cfg.model_validate(base_cfg.resolved() | {"warmup": base_cfg.resolved()["warmup"] | over})
    scratch = Path(tempfile.mkdtemp(prefix="warmup-draws-", dir=ROOT / "data"))
    if not a.keep:
        os.environ["SPARK_WARMUP_DIR"] = str(scratch / "warmups")  # not beside the model: these are thrown away
    rows = []
    try:
        for engine in a.engines:
            for seed in a.seeds:
                cfg = base_cfg.model_copy(update={"seed": seed, "rollout": base_cfg.rollout.model_copy(update={"engine": engine})})
                run = scratch / f"{engine}-{seed}"
                t0 = time.monotonic()
                prepare_problems(cfg, run)
                doc = warmup_stage(cfg, run, 0)
                made = time.monotonic() - t0
                m = doc["metrics"]
                w = cfg.warmup
                tasks = solve_tasks(warmup.warmup_problems(problems_of(run, "train"), w.problems, cfg.seed), cfg.prompts.solve)
                examples = pq.read_table(run / "warmup" / "examples.parquet").to_pylist()
                row = {"made_with": engine, "seed": seed, "seconds": round(made, 1), "examples": doc["rows"]["examples"],
                       "target_chars": statistics.mean(len(e["target"]) for e in examples),
                       "kinds": {k: sum(e["kind"] == k for e in examples) for k in ("solve", "pointwise", "pairwise", "reflection")},
                       **{k: m.get(k) for k in METRICS}}
                row["check"] = cross_check(cfg, Path(doc["shared"]), tasks, a.check_group, cfg.seed * 1000 + 950)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if not a.keep:
                    shutil.rmtree(doc["shared"], ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    Path(a.out).write_text(json.dumps({"config": str(Path(a.config).resolve().relative_to(ROOT)), "warmup": a.warmup,
                                       "check_group": a.check_group, "rows": rows}, indent=2) + "\n")
    print("| made with | seed | examples | target chars | boxed before -> after | verdicts before -> after | "
          "check boxed HF / vLLM | check accuracy HF / vLLM | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else f"{v:.2f}"
    for r in rows:
        c = r["check"]
        print(f"| {r['made_with']} | {r['seed']} | {r['examples']} | {r['target_chars']:.0f} | "
              f"{f(r['solve_boxed_before'])} -> {f(r['solve_boxed_after'])} | {f(r['judge_parsed_before'])} -> "
              f"{f(r['judge_parsed_after'])} | {f(c['hf']['boxed'])} / {f(c['vllm']['boxed'])} | "
              f"{f(c['hf']['accuracy'])} / {f(c['vllm']['accuracy'])} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
