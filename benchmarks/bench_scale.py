"""What sharding and several training processes cost on one machine, through the Prefect flow.

The shipped tiny config, one warm-up flow run (problems, judge set, MLflow store) and then one
timed flow run of N iterations per placement:

- `baseline`: one rollout task, the train stage in the flow's process;
- `shards-local`: `rollout.shards: 2` on the local runner (shards one after another);
- `shards-ray`: `rollout.shards: 2` on a local 2-CPU Ray cluster (`runner: ray`);
- `torchrun`: `train.processes: 2` (gloo);
- `ray+torchrun`: both (configs/tiny-ray.yaml).

Reported: wall time per iteration, rollout and train stage seconds (shards: the merge plus the
slowest shard), and the ratio to the baseline. On a 2-core CPU none of this can be faster than
one process (the baseline's torch already uses both cores): the figures are the overhead a user
pays for the scale-out path, not a speed-up.

Run: `.venv/bin/python benchmarks/bench_scale.py [--iterations 2] [--out docs/bench/scale.json]`
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from flows.local import api_or_ephemeral  # noqa: E402
from flows.spark_flow import spark  # noqa: E402
from spark_core.data.store import read_manifest  # noqa: E402

PLACEMENTS = {
    "baseline": {},
    "shards-local": {"rollout": {"shards": 2}},
    "shards-ray": {"rollout": {"shards": 2}, "runner": "ray", "ray": {"num_cpus": 2}},
    "torchrun": {"train": {"processes": 2}},
    "ray+torchrun": {"rollout": {"shards": 2}, "runner": "ray", "ray": {"num_cpus": 2}, "train": {"processes": 2}},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--placement", action="append", choices=tuple(PLACEMENTS))
    ap.add_argument("--out", default="docs/bench/scale.json")
    args = ap.parse_args()
    base = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    results = {}
    with tempfile.TemporaryDirectory() as tmp, api_or_ephemeral():
        for name in args.placement or list(PLACEMENTS):
            cfg_path = Path(tmp) / f"{name}.yaml"
            cfg_path.write_text(yaml.safe_dump(_merge(base, PLACEMENTS[name]) | {"eval": {"every": 1000}}))
            data = Path(tmp) / name
            spark(run="bench", config=str(cfg_path), iterations=1, data_dir=str(data))  # warm-up run
            t0 = time.monotonic()
            spark(run="bench", config=str(cfg_path), iterations=args.iterations, data_dir=str(data))
            wall = (time.monotonic() - t0) / args.iterations
            run = data / "runs" / "bench"
            stages: dict[str, float] = {}
            for k in range(1, 1 + args.iterations):
                doc = read_manifest(run, "iteration", k)
                for phase in ("policy", "reward"):
                    sec = doc["stage_seconds"][f"rollout_{phase}"]
                    shards = doc["placement"].get(f"rollout_{phase}_shards") or []
                    sec += max((s["seconds"] for s in shards), default=0.0)
                    stages[f"rollout_{phase}_s"] = stages.get(f"rollout_{phase}_s", 0.0) + sec / args.iterations
                    stages[f"train_{phase}_s"] = (stages.get(f"train_{phase}_s", 0.0)
                                                  + doc["stage_seconds"][f"train_{phase}"] / args.iterations)
            results[name] = {"seconds_per_iteration": wall, **stages}
            print(name, json.dumps({k: round(v, 2) for k, v in results[name].items()}), flush=True)
    for r in results.values():
        r["ratio_to_baseline"] = r["seconds_per_iteration"] / results["baseline"]["seconds_per_iteration"] \
            if "baseline" in results else None
    out = {"date": time.strftime("%Y-%m-%d"), "iterations": args.iterations, "config": "configs/tiny.yaml",
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
