"""Pipeline throughput and orchestration overhead, through the real Prefect flow.

For each model (the shipped tiny checkpoint, and a larger tiny-architecture model built with
random weights, which only measures speed): one warm-up flow run of 1 iteration (creates the
MLflow store, the problems table, the judge set), then one timed flow run of N iterations.
Reported per configuration: wall time of each stage (mean over the N iterations), rollout and
training tokens/s, peak resident memory of this process, and the orchestration overhead: the
share of the timed flow run's wall time spent outside the stages' own work (Prefect task
runs, manifests, locks, MLflow tracking, the co-evolution plot), and the share of each component
(spark_core/timing.py: model loads, Parquet and manifests inside the stages; manifests, MLflow,
the plot and the rest, which is Prefect and the flow's code, outside them).

Run: `.venv/bin/python benchmarks/bench_pipeline.py [--iterations 3] [--out docs/bench/pipeline.parquet]`
Without a running Prefect server the flow uses a temporary one (flows/local.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from flows.local import api_or_ephemeral  # noqa: E402
from flows.spark_flow import spark  # noqa: E402
from spark_core.model.checkpoint import build_model, build_tokenizer, save_checkpoint  # noqa: E402
from spark_core.config import TinyModelConfig, load_config  # noqa: E402
from spark_core.rundir import STAGES  # noqa: E402
from spark_core.data.store import read_manifest  # noqa: E402
from spark_core import timing  # noqa: E402

LARGER = {"hidden": 256, "layers": 8, "heads": 8, "intermediate": 1024, "max_positions": 256}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, cfg_path: Path, iterations: int, work: Path) -> dict:
    data = work / name
    run = "bench"
    spark(run=run, config=str(cfg_path), iterations=1, data_dir=str(data))  # warm-up: stores, tables, judge set
    timing.reset()
    start = time.monotonic()
    spark(run=run, config=str(cfg_path), iterations=iterations, data_dir=str(data))
    wall = time.monotonic() - start
    parts = components(timing.totals(), wall)
    run_dir = data / "runs" / run
    stage_secs = {s: [] for s in STAGES}
    metrics = []
    for k in range(1, iterations + 1):
        doc = read_manifest(run_dir, "iteration", k)
        for s, v in doc["stage_seconds"].items():
            stage_secs[s].append(v)
        metrics.append(doc["metrics"])
    work_secs = sum(sum(v) for v in stage_secs.values())
    mean = lambda key: statistics.mean(m[key] for m in metrics if key in m)  # noqa: E731
    cfg = load_config(cfg_path)
    return {
        "config": name, "iterations": iterations, "wall_seconds": wall,
        "seconds_per_iteration": wall / iterations, "stage_work_seconds": work_secs,
        "overhead_share": 1 - work_secs / wall,
        **{f"stage_{s}_s": statistics.mean(v) if v else 0.0 for s, v in stage_secs.items()},
        "rollout_tokens_per_s_policy": mean("policy/rollout_tokens_per_s"),
        "rollout_tokens_per_s_reward": mean("reward/rollout_tokens_per_s"),
        "train_tokens_per_s_policy": mean("policy/train_tokens_per_s"),
        "train_tokens_per_s_reward": mean("reward/train_tokens_per_s"),
        "peak_rss_mb": peak_rss_mb(), "batch_prompts": cfg.rollout.batch_prompts, "group_size": cfg.rollout.group_size,
        **{f"share_{k}": v / wall for k, v in parts.items()},
    }


def components(rows: list[dict], wall: float) -> dict[str, float]:
    """Seconds per component of a flow run (spark_core/timing.py): the stages' compute, the I/O
    inside stages, and outside them (the orchestration overhead) manifests, MLflow, the plot,
    Parquet, model loads, and the rest (Prefect's task runs and the flow's own code)."""
    out: dict[str, float] = {}
    for r in rows:
        name = r["component"].replace("/", "_").replace(" ", "_")
        key = "stage_compute" if name == "stage" else f"{'in_stage' if r['in_stage'] else 'outside'}_{name}"
        out[key] = out.get(key, 0.0) + r["seconds"]
    out["outside_prefect_and_flow"] = wall - sum(out.values())
    return out


def larger_config(work: Path) -> Path:
    """A config on a bigger tiny-architecture model with random weights (speed only)."""
    model_dir = work / "larger-model"
    if not (model_dir / "config.json").is_file():
        tok = build_tokenizer()
        save_checkpoint(build_model(tok, TinyModelConfig(**LARGER), seed=0), tok, model_dir)
    base = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    base["model"] = {"path": str(model_dir)}
    path = work / "larger.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--skip-larger", action="store_true")
    ap.add_argument("--out", default=None, help="write the rows as Parquet here")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    rows = []
    with api_or_ephemeral():
        rows.append(measure("tiny (0.87M params, shipped)", ROOT / "configs" / "tiny.yaml", a.iterations, work))
        if not a.skip_larger:
            rows.append(measure("larger tiny-architecture (random weights)", larger_config(work), a.iterations, work))
    for r in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if not k.startswith("share_")},
                         indent=1))
        print(f"where the wall time of {r['config']} went (share of {r['wall_seconds']:.1f} s):")
        for k, v in sorted(((k, v) for k, v in r.items() if k.startswith("share_")), key=lambda kv: -kv[1]):
            print(f"  {k[6:]:<34} {100 * v:6.2f}%")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), a.out)


if __name__ == "__main__":
    main()
