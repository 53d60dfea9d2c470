"""Peak memory of one training micro-batch at a real vocabulary: full logits vs blocked LM head.

The model is Qwen2.5-0.5B's head and embedding shape (hidden 896, vocabulary 151,936, untied)
on one decoder layer with random weights: the vocabulary-dependent memory is the same as the
24-layer model's, the 23 missing layers' activations are not (they do not grow with V).
Each case runs in a fresh subprocess and reports its peak RSS (ru_maxrss) above the RSS
after the model is built, for one forward + backward of the GRPO loss's inputs (response
log-probs and entropy of every position) at the given batch and length.

    .venv/bin/python benchmarks/bench_memory.py                       # the README table
    .venv/bin/python benchmarks/bench_memory.py --case blocked --batch 16 --length 1024

The full-logits case at 16 x 1,024 needs about 10 GB per (B, T, V) float32 copy and several
copies: it is run at smaller batches and its growth is linear in B (the table says so).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB, HIDDEN = 151_936, 896


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def one_case(case: str, batch: int, length: int, threads: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from spark_core.maths.grpo import token_entropy, token_logprobs
    from spark_core.model.logits import response_stats

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=4864, num_hidden_layers=1,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).train()
    ids = torch.randint(0, VOCAB, (batch, length))
    prompt = length // 4
    R = length - prompt
    where = torch.stack([prompt - 1 + torch.arange(R) + i * length for i in range(batch)])  # (B, R)
    tokens = ids[:, prompt:]  # (B, R)
    mask = torch.ones((batch, R), dtype=torch.bool)
    base = rss_gb()
    t0 = time.monotonic()
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if case == "full":
        logits = model(**inputs).logits.reshape(-1, VOCAB)[where]  # (B, R, V), what the trainer used to do
        logp, ent = token_logprobs(logits, tokens), token_entropy(logits.detach())
    else:
        logp, ent = response_stats(model, inputs, where, tokens, mask)
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    seconds = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    return {"case": case, "batch": batch, "length": length, "peak_gb_above_model": round(peak - base, 2),
            "seconds": round(seconds, 1), "loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["full", "blocked"], help="Run one case in this process.")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "memory.json")
    a = ap.parse_args()
    if a.case:
        print(json.dumps(one_case(a.case, a.batch, a.length, a.threads)))
        return
    rows = []
    for case, batch in (("full", 1), ("full", 2), ("blocked", 1), ("blocked", 2), ("blocked", 16)):
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--batch", str(batch), "--length", str(a.length),
                               "--threads", str(a.threads)], capture_output=True, text=True)
        if proc.returncode != 0:
            row = {"case": case, "batch": batch, "length": a.length, "error": f"exit {proc.returncode} (killed for memory?)"}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
