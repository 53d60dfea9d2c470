"""Does torch.compile (CPU inductor) speed up the trainer's forward/backward? (issue 19, lever 1)

The tiny shipped model, a policy period's shape: 64 sequences (prompt ~20 tokens, response
8-48 tokens, drawn with a fixed seed), mini-batch 64, micro-batch 64, the real Trainer. Times
`train_period` over the same batch `--steps` times, eager against the model's forward wrapped
in `torch.compile(dynamic=True)` (policy and reference), after one warm-up step each; the
compile itself (the warm-up) is reported apart. Also checks the loss of the first step agrees.

    .venv/bin/python benchmarks/bench_compile.py [--steps 10] [--threads 2] [--mode default]
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch

from spark_core.model.checkpoint import load_checkpoint
from spark_core.model.trainer import Sequence_, Trainer, TrainSettings


def batch(vocab: int, n: int = 64, seed: int = 0) -> list[Sequence_]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, r = rng.randint(16, 24), rng.randint(8, 48)
        out.append(Sequence_([rng.randrange(3, vocab) for _ in range(p)], [rng.randrange(3, vocab) for _ in range(r)],
                             [-2.0] * r, rng.choice([-1.0, 1.0])))
    return out


def timed(compiled: bool, seqs, steps: int, mode: str) -> tuple[float, float, float]:
    """(first step seconds, median step seconds, first loss)."""
    model, tok = load_checkpoint("data/tiny-model")
    ref = copy.deepcopy(model)
    if compiled:
        model.forward = torch.compile(model.forward, dynamic=True, mode=None if mode == "default" else mode)
        ref.forward = torch.compile(ref.forward, dynamic=True, mode=None if mode == "default" else mode)
    trainer = Trainer(model, ref, TrainSettings(lr=1e-4, mini_batch_size=64, micro_batch_size=64, blocked_logits="never"),
                      tok.pad_token_id, torch.device("cpu"))
    times, loss = [], None
    for i in range(steps + 1):
        start = time.perf_counter()
        row = trainer.train_period(seqs, "policy")[0]
        times.append(time.perf_counter() - start)
        loss = row["loss"] if loss is None else loss
    rest = sorted(times[1:])
    return times[0], rest[len(rest) // 2], loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default="default", help="torch.compile mode: default | max-autotune-no-cudagraphs")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_checkpoint("data/tiny-model")
    seqs = batch(model.config.vocab_size)
    e_first, e_med, e_loss = timed(False, seqs, a.steps, a.mode)
    c_first, c_med, c_loss = timed(True, seqs, a.steps, a.mode)
    print(f"eager:    first step {e_first:.3f}s, median {e_med * 1000:.1f} ms/step, loss {e_loss:.6f}")
    print(f"compiled: first step {c_first:.3f}s (compile), median {c_med * 1000:.1f} ms/step, loss {c_loss:.6f}")
    print(f"speed-up {e_med / c_med:.2f}x; compile cost {c_first - c_med:.1f}s, repaid after "
          f"{(c_first - c_med) / max(1e-9, e_med - c_med):.0f} steps" if c_med < e_med else "no speed-up")


if __name__ == "__main__":
    main()
