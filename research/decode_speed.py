"""Decode speed of the HF engine on checkpoints (issue 31): milliseconds per step, greedy and sampled.

    .venv/bin/python research/decode_speed.py CKPT [CKPT ...] [--frozen] [--multinomial] [--profile]

For each checkpoint (a model directory or a LoRA checkpoint, merged on load as every stage does):
greedy 8 prompts x 32 tokens and sampled 4 prompts x 4 samples x 48 tokens at T=1, every row
decoding all its tokens (`ignore_eos`), each timed twice after a short warm-up call.
`--frozen` sets requires_grad False on every weight first, as peft's `merge_and_unload` left
them before 2026-12-07 (the LM head then ran as a broadcast bmm at every prefill; since the engine
keeps the prefill's last position by index, `--frozen` shows that a frozen model decodes as fast:
to reproduce the old cost, run this at commit bdb6606);
`--multinomial` samples with `torch.multinomial`, as the engine did before `inverse_cdf`.
`--profile` prints torch's operator table for one sampled call.
"""

from __future__ import annotations

import argparse
import time

import torch

from spark_core.model import rollout
from spark_core.model.rollout import HFEngine, SamplingSpec

PROMPTS = [f"What is {a} + {b}? Put the final answer in \\boxed{{}}." for a, b in
           [(12, 7), (45, 29), (301, 4), (8, 88), (19, 23), (60, 7), (5, 500), (71, 17)]]


def _multinomial(logits, temperature, top_p, generator):
    """The engine's sampler before inverse_cdf (top-p not supported here)."""
    logp = torch.log_softmax(logits.float() / temperature, -1)
    if temperature <= 0:
        tok = logp.argmax(-1)
    else:
        tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def ms_per_step(engine: HFEngine, prompts, spec: SamplingSpec, reps: int = 2) -> float:
    engine.generate(prompts[:1], SamplingSpec(1, spec.temperature, 1.0, 4, seed=0))
    best = []
    for _ in range(reps):
        t = time.perf_counter()
        engine.generate(prompts, spec)
        best.append((time.perf_counter() - t) / spec.max_new_tokens * 1000)
    return min(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--dtype", default="bf16_if_native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frozen", action="store_true")
    ap.add_argument("--multinomial", action="store_true")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.multinomial:
        rollout.sample_next = _multinomial
    for path in a.checkpoints:
        t = time.perf_counter()
        engine = HFEngine(path, device="cpu", dtype=a.dtype)
        load = time.perf_counter() - t
        if a.frozen:
            engine.model.requires_grad_(False)
        greedy = ms_per_step(engine, PROMPTS, SamplingSpec(1, 0.0, 1.0, 32, seed=0, ignore_eos=True))
        sampled = ms_per_step(engine, PROMPTS[:4], SamplingSpec(4, 1.0, 1.0, 48, seed=0, ignore_eos=True))
        print(f"{path}: {engine.model.dtype}, load {load:.1f} s, greedy 8x32 {greedy:.0f} ms/step "
              f"({8000 / greedy:.1f} tok/s), sampled 16x48 {sampled:.0f} ms/step ({16000 / sampled:.1f} tok/s)"
              f"{' [frozen]' if a.frozen else ''}{' [multinomial]' if a.multinomial else ''}", flush=True)
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as p:
                engine.generate(PROMPTS[:4], SamplingSpec(4, 1.0, 1.0, 16, seed=0, ignore_eos=True))
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
