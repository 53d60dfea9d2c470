"""Rollout throughput: the HF engine against a plain loop of per-prompt `model.generate` calls.

64 prompts x 8 samples on the tiny model (default: the shipped data/tiny-model, else a
randomly initialised one of the same shape), the same sampling settings for both:
temperature 1.0, at most 48 new tokens, stop at EOS. Tokens counted are generated tokens up to
and including EOS. Run: `.venv/bin/python benchmarks/bench_rollout.py [CHECKPOINT]`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from spark_core.model.checkpoint import build_model, build_tokenizer, chat_prompt, load_checkpoint
from spark_core.config import SparkConfig
from spark_core.data.problems import generate_problems
from spark_core.model.rollout import HFEngine, SamplingSpec

PROMPTS, GROUP, MAX_NEW, REPEATS = 64, 8, 48, 3


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("data/tiny-model")
    cfg = SparkConfig()
    if (path / "config.json").is_file():
        model, tok = load_checkpoint(path)
        what = str(path)
    else:
        tok = build_tokenizer()
        model = build_model(tok, cfg.bootstrap.model, 0).eval()
        what = "randomly initialised tiny model (no checkpoint found)"
    prompts = [p.question for p in generate_problems(cfg.problems, 0)[1][:PROMPTS]]
    spec = SamplingSpec(group_size=GROUP, temperature=1.0, max_new_tokens=MAX_NEW, seed=0)

    engine = HFEngine(model, tok)

    def run_engine() -> tuple[int, float]:
        start = time.perf_counter()
        groups = engine.generate(prompts, spec)
        return sum(len(s.token_ids) for g in groups for s in g), time.perf_counter() - start

    def run_loop() -> tuple[int, float]:
        torch.manual_seed(0)
        start, tokens = time.perf_counter(), 0
        with torch.no_grad():
            for q in prompts:
                ids = tok(chat_prompt(tok, q), add_special_tokens=False, return_tensors="pt")["input_ids"]
                out = model.generate(ids, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=MAX_NEW,
                                     num_return_sequences=GROUP, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                for row in out[:, ids.shape[1]:].tolist():
                    tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        return tokens, time.perf_counter() - start

    # Median of REPEATS runs each: one engine run is under a second, so a single one is noisy.
    engine_tokens, engine_s = sorted((run_engine() for _ in range(REPEATS)), key=lambda r: r[0] / r[1])[REPEATS // 2]
    loop_tokens, loop_s = sorted((run_loop() for _ in range(REPEATS)), key=lambda r: r[0] / r[1])[REPEATS // 2]

    print(f"model: {what}; {PROMPTS} prompts x {GROUP} samples, <= {MAX_NEW} new tokens, "
          f"torch threads {torch.get_num_threads()}, median of {REPEATS} runs")
    print(f"HF engine:            {engine_tokens:6d} tokens in {engine_s:6.2f}s = {engine_tokens / engine_s:8.0f} tokens/s")
    print(f"per-prompt generate:  {loop_tokens:6d} tokens in {loop_s:6.2f}s = {loop_tokens / loop_s:8.0f} tokens/s")
    print(f"ratio: {(engine_tokens / engine_s) / (loop_tokens / loop_s):.1f}x")


if __name__ == "__main__":
    main()
