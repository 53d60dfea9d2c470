"""vLLM on this CPU, checked (issue 32, items 2 and 3): same seed gives the same rows from a fresh
engine, every `stop` response ends in a declared end token, and vLLM's sampling log-probs
against a plain HF forward of the same tokens (what the trainer recomputes).

    .venv-vllm/bin/python research/vllm_check.py [--model DIR] [--prompts 8] [--group 4] [--max-new 96]

Two engine starts (about 50 s each, eager) and one HF forward per sample: about 3 minutes here.
Prints one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sample(model: str, prompts: list[str], group: int, max_new: int):
    from spark_core.model.rollout import SamplingSpec, VLLMEngine

    eng = VLLMEngine(model, dtype="float32", seed=0, enforce_eager=True, max_model_len=1024)
    try:
        return eng.generate(prompts, SamplingSpec(group_size=group, temperature=1.0, max_new_tokens=max_new, seed=0)), eng.eos_ids
    finally:
        eng.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "data/models/qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--benchmark", default=str(REPO.parent / "shared/data/benchmarks/gsm8k.jsonl"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--out", default=str(REPO / "docs/bench/vllm_check.json"))
    a = ap.parse_args()

    from spark_core.data.problems import load_problems
    from spark_core.periods import solve_tasks

    prompts = [t.prompt for t in solve_tasks(load_problems(a.benchmark)[: a.prompts], "concise")]
    first, eos = sample(a.model, prompts, a.group, a.max_new)
    second, _ = sample(a.model, prompts, a.group, a.max_new)
    rows = [s for g in first for s in g]
    same = sum(x.token_ids == y.token_ids for gx, gy in zip(first, second) for x, y in zip(gx, gy))
    stops = [s for s in rows if s.finish_reason == "stop"]
    bad_stops = [s for s in stops if not s.token_ids or s.token_ids[-1] not in eos]

    import torch

    from spark_core.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(Path(a.model), torch.device("cpu"), torch.float32)
    model.eval()
    diffs, ratios = [], []
    with torch.no_grad():
        for s in rows:
            ids = torch.tensor([s.prompt_ids + s.token_ids])
            logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1 : -1]  # (L, V): the logits that sampled each token
            hf = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(s.token_ids)[:, None])[:, 0]
            d = hf - torch.tensor(s.logprobs)
            diffs += d.abs().tolist()
            ratios += torch.exp(-d).tolist()  # pi_vllm / pi_hf per token: the importance ratio if the trainer used vLLM's
    out = dict(
        model=a.model, prompts=a.prompts, group=a.group, max_new_tokens=a.max_new, samples=len(rows),
        rerun_identical=f"{same}/{len(rows)}", stopped=len(stops), stopped_without_end_token=len(bad_stops),
        end_tokens=sorted(eos), tokens=len(diffs),
        logprob_abs_diff_mean=round(statistics.fmean(diffs), 6), logprob_abs_diff_max=round(max(diffs), 6),
        ratio_min=round(min(ratios), 4), ratio_max=round(max(ratios), 4),
        ratio_sd=round(statistics.pstdev(ratios), 5),
        command=".venv-vllm/bin/python research/vllm_check.py",
    )
    print(json.dumps(out, indent=1))
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
