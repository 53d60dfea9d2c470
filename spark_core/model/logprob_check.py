"""The sampler's log-probs against the trainer's model code on the same tokens.

The trainer takes the rollout's log-probs as its old policy (the ratio's denominator). They are
the trainer's own numbers only if the engine computes what the trainer's forward does; another
engine (vLLM: other kernels, another dtype) may not, and then the first step's ratio is off by
that much before any update. So after a training rollout from such an engine the stage
recomputes them here (float32 weights, the trainer's bf16 autocast when it uses one, log-probs
in float32 at the sampler's temperature, as `maths.grpo.token_logprobs`), reports the
difference in its manifest, and hands the trainer the recomputed ones when the mean difference
exceeds `rollout.logprob_tolerance` (verl and TRL likewise recompute the old log-probs).
"""

from __future__ import annotations

import contextlib
import math
import statistics
from pathlib import Path
from typing import Sequence

import torch

from spark_core.maths.grpo import token_logprobs
from spark_core.model.logits import head_parts, response_stats
from spark_core.model.rollout import Sample, native_bf16, pick_device


def recompute_logprobs(model, samples: Sequence[Sample], temperature: float, autocast: bool = False) -> list[list[float]]:
    """Per sample, the log-probs of its response tokens under `model` at `temperature`, one row at
    a time, by the trainer's blocked path where the model has one (only the response positions
    go through the LM head, in float32 blocks), else from the logits of the response positions."""
    device = next(model.parameters()).device
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if autocast and native_bf16(device)
           else contextlib.nullcontext())
    blocked = head_parts(model) is not None
    out = []
    with torch.no_grad(), ctx:
        for s in samples:
            P, R = len(s.prompt_ids), len(s.token_ids)
            if not R:
                out.append([])
                continue
            ids = torch.tensor([list(s.prompt_ids) + list(s.token_ids)], device=device)  # (1, P + R)
            tokens = torch.tensor([s.token_ids], device=device)  # (1, R)
            if blocked:
                where = torch.arange(P - 1, P + R - 1, device=device)[None]  # (1, R): the positions predicting each token
                lp, _ = response_stats(model, {"input_ids": ids}, where, tokens, torch.ones_like(tokens), temperature)
            else:
                logits = model(input_ids=ids, logits_to_keep=R + 1).logits[:, :-1]  # (1, R, V)
                lp = token_logprobs(logits, tokens, temperature)
            out.append(lp[0].float().tolist())
    return out


def diff_stats(engine: Sequence[Sequence[float]], recomputed: Sequence[Sequence[float]]) -> dict:
    """|engine - recomputed| per token (mean, max) and the importance ratio the trainer's first
    step would see with the engine's log-probs as old ones, exp(recomputed - engine) (min, max, sd)."""
    d = [r - e for es, rs in zip(engine, recomputed) for e, r in zip(es, rs)]
    if not d:
        return dict(tokens=0, abs_diff_mean=0.0, abs_diff_max=0.0, ratio_min=1.0, ratio_max=1.0, ratio_sd=0.0)
    ratios = [math.exp(x) for x in d]
    return dict(tokens=len(d), abs_diff_mean=statistics.fmean(abs(x) for x in d), abs_diff_max=max(abs(x) for x in d),
                ratio_min=min(ratios), ratio_max=max(ratios), ratio_sd=statistics.pstdev(ratios))


def check_groups(checkpoint: Path, groups: list[list[Sample]], temperature: float, autocast: bool,
                 tolerance: float) -> tuple[list[list[Sample]], dict]:
    """The groups with the trainer's log-probs when the engine's differ by more than `tolerance`
    (mean |diff|), else unchanged; and the manifest's `logprob_check` entry."""
    from dataclasses import replace

    from spark_core.model.checkpoint import load_checkpoint

    rows = [s for g in groups for s in g]
    model, _ = load_checkpoint(checkpoint, pick_device("auto"), torch.float32)  # adapters merged in
    model.eval()
    mine = recompute_logprobs(model, rows, temperature, autocast)
    del model
    doc = diff_stats([s.logprobs for s in rows], mine) | dict(tolerance=tolerance)
    doc["old_logprobs"] = "recomputed" if doc["abs_diff_mean"] > tolerance else "engine"
    if doc["old_logprobs"] == "recomputed":
        it = iter(mine)
        groups = [[replace(s, logprobs=next(it)) for s in g] for g in groups]
    return groups, doc
