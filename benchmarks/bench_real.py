"""Real-model throughput on this machine (issue 19, item 3): Qwen2.5-Coder-0.5B-Instruct.

Rollout: the HF engine against plain `model.generate` on the same prompts and settings: one
batched call over every prompt x sample (left padding), and a loop of per-prompt calls with
`num_return_sequences` (what bench_rollout.py compares on the tiny model). The prompts are the
first GSM8K test questions under the `concise` solve template; temperature 1.0, top-k/top-p
off, the model's end tokens stop a sequence. Tokens counted are generated tokens up to and
including the first end token, so padding after a finished row is not counted.

Training: one GRPO policy period through `Trainer.train_period` on the engine's own samples
(advantages from the real verifier, one optimizer step per mini-batch), with the CPU config's
sizes (mini-batch 16, micro-batch 4); tokens/s counts prompt + response tokens through the
forward and backward, response tokens/s those that carry the loss.

    .venv/bin/python benchmarks/bench_real.py [--model DIR] [--prompts 8] [--group 4]
        [--max-new 64] [--dtype float32|bfloat16] [--out docs/bench/real.json]

Needs `spark model fetch qwen2.5-coder-0.5b-instruct` first. About 6 minutes on this CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from spark_core.model.checkpoint import load_checkpoint
from spark_core.periods import score, solve_tasks, training_batch
from spark_core.data.problems import load_problems
from spark_core.model.rollout import HFEngine, SamplingSpec
from spark_core.model.trainer import Trainer, TrainSettings


def generated_tokens(rows: list[list[int]], eos: set[int]) -> int:
    """Tokens up to and including the first end token of each row (all of a row without one)."""
    total = 0
    for row in rows:
        end = next((i for i, t in enumerate(row) if t in eos), None)
        total += len(row) if end is None else end + 1
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/models/qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--benchmark", default="../shared/data/benchmarks/gsm8k.jsonl")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/bench/real.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    model, tok = load_checkpoint(Path(a.model), torch.device("cpu"), dtype)
    model.eval()
    problems = load_problems(a.benchmark)[: a.prompts]
    tasks = solve_tasks(problems, "concise")
    engine = HFEngine(model, tok, device="cpu")
    eos = set(engine.eos_ids)
    spec = SamplingSpec(group_size=a.group, temperature=1.0, max_new_tokens=a.max_new, seed=0)
    out: dict = dict(model=a.model, dtype=a.dtype, threads=a.threads, prompts=a.prompts, group=a.group,
                     max_new_tokens=a.max_new, machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                     date=str(date.today()), torch=torch.__version__)

    # --- rollout: the engine (a first short call warms the kernels up, as for the others)
    engine.generate([tasks[0].prompt], SamplingSpec(group_size=1, max_new_tokens=4, seed=0))
    start = time.perf_counter()
    groups = engine.generate([t.prompt for t in tasks], spec)
    engine_s = time.perf_counter() - start
    engine_tokens = sum(len(s.token_ids) for g in groups for s in g)
    out["engine"] = dict(tokens=engine_tokens, seconds=round(engine_s, 2), tokens_per_s=round(engine_tokens / engine_s, 1))
    print(f"HF engine:              {engine_tokens:5d} tokens in {engine_s:6.1f}s = {engine_tokens / engine_s:6.1f} tokens/s")

    encoded = engine.encode([t.prompt for t in tasks])
    gen_kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=a.max_new,
                  eos_token_id=sorted(eos), pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        # one batched call over every prompt x sample, left-padded
        torch.manual_seed(0)
        rows = [ids for ids in encoded for _ in range(a.group)]
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        start = time.perf_counter()
        gen = model.generate(input_ids=ids, attention_mask=mask, **gen_kw)
        batched_s = time.perf_counter() - start
        batched_tokens = generated_tokens(gen[:, width:].tolist(), eos)
        # a loop of per-prompt calls
        torch.manual_seed(0)
        start, loop_tokens = time.perf_counter(), 0
        for r in encoded:
            gen = model.generate(input_ids=torch.tensor([r]), num_return_sequences=a.group, **gen_kw)
            loop_tokens += generated_tokens(gen[:, len(r):].tolist(), eos)
        loop_s = time.perf_counter() - start
    out["generate_batched"] = dict(tokens=batched_tokens, seconds=round(batched_s, 2),
                                   tokens_per_s=round(batched_tokens / batched_s, 1))
    out["generate_per_prompt"] = dict(tokens=loop_tokens, seconds=round(loop_s, 2), tokens_per_s=round(loop_tokens / loop_s, 1))
    print(f"model.generate batched: {batched_tokens:5d} tokens in {batched_s:6.1f}s = {batched_tokens / batched_s:6.1f} tokens/s")
    print(f"model.generate/prompt:  {loop_tokens:5d} tokens in {loop_s:6.1f}s = {loop_tokens / loop_s:6.1f} tokens/s")

    # --- training: one policy period on the engine's samples
    rows, _, _ = score(tasks, groups, "policy")
    batch = training_batch(groups, rows)
    settings = TrainSettings(lr=1e-6, mini_batch_size=16, micro_batch_size=4, total_steps=100)
    trainer = Trainer(model, copy.deepcopy(model), settings, tok.pad_token_id, torch.device("cpu"))
    model.train()
    start = time.perf_counter()
    updates = trainer.train_period(batch, "policy")
    train_s = time.perf_counter() - start
    all_tokens = sum(len(x.prompt_ids) + len(x.response_ids) for x in batch)
    resp_tokens = sum(len(x.response_ids) for x in batch)
    out["train"] = dict(sequences=len(batch), optimizer_steps=len(updates), seconds=round(train_s, 2),
                        tokens=all_tokens, tokens_per_s=round(all_tokens / train_s, 1),
                        response_tokens=resp_tokens, response_tokens_per_s=round(resp_tokens / train_s, 1),
                        peak_rss_gb=round(_peak_rss_gb(), 2))
    print(f"train: {len(batch)} sequences, {len(updates)} steps in {train_s:.1f}s: {all_tokens / train_s:.1f} tokens/s "
          f"({resp_tokens / train_s:.1f} response tokens/s); peak RSS {out['train']['peak_rss_gb']} GB")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {a.out}")


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    main()
