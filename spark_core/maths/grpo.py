"""GRPO as SPARK trains it: group advantages, the clipped surrogate with k3 KL, one aggregation.

Pure functions on torch tensors (no I/O, no Prefect). Shapes: N rollouts in a flat batch,
B sequences of T response tokens, V vocabulary entries. Names are the config strings:
advantages by `ADVANTAGES` (`grpo`, `drgrpo`), losses by `POLICY_LOSSES` (`clipped`),
aggregation by `AGG_MODES`, in the manner of verl's `core_algos.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

AdvantageFn = Callable[..., Tensor]
ADVANTAGES: dict[str, AdvantageFn] = {}
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean")

# exp() of a log-ratio past this overflows float32 (e^88); verl clamps at 20 too. Without it one
# stale or padded token makes inf, and inf * 0 gradient is NaN for the whole batch.
_LOG_RATIO_CLAMP = 20.0


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: file an advantage estimator under `name` (the config string)."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES:
            raise ValueError(f"advantage {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return deco


def advantage_fn(name: str) -> AdvantageFn:
    """The advantage estimator registered as `name`; KeyError lists the known names."""
    try:
        return ADVANTAGES[name]
    except KeyError:
        raise KeyError(f"unknown advantage {name!r}; known: {sorted(ADVANTAGES)}") from None


def _group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(N,), (N,) -> per-rollout (r, group mean, unbiased group std, group all-equal), each (N,)."""
    if rewards.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(f"rewards and group_ids must both be (N,), got {tuple(rewards.shape)} "
                         f"and {tuple(group_ids.shape)}")
    r = rewards if rewards.dtype == torch.float64 else rewards.float()  # (N,)
    _, inv = torch.unique(group_ids, return_inverse=True)  # (N,) group index in [0, G)
    G = int(inv.max()) + 1 if r.numel() else 0
    count = torch.zeros(G, dtype=r.dtype, device=r.device).index_add_(0, inv, torch.ones_like(r))  # (G,)
    mean = torch.zeros(G, dtype=r.dtype, device=r.device).index_add_(0, inv, r) / count  # (G,)
    diff = r - mean[inv]  # (N,)
    sq = torch.zeros(G, dtype=r.dtype, device=r.device).index_add_(0, inv, diff * diff)  # (G,)
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # (G,) n-1 denominator; singletons give 0
    # All-equal is decided on the rewards themselves, not on std == 0: the float mean of three
    # 0.1s is 0.10000000000000002, and 1e-17 / eps would be a tiny but nonzero "advantage".
    hi = torch.full((G,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce_(0, inv, r, "amax")
    lo = torch.full((G,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce_(0, inv, r, "amin")
    return r, mean[inv], std[inv], (hi == lo)[inv]


@register_advantage("grpo")
def grpo_advantage(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """(N,) float, (N,) long -> (N,). GRPO: (r - group mean) / (group std + eps).

    The std is the UNBIASED one, sqrt(sum (r - mean)^2 / (n - 1)), as verl's
    `compute_grpo_outcome_advantage` (torch.std); numpy's default (divide by n) would give
    larger advantages. Groups may come in any order and be of unequal sizes. A group of one,
    or one whose rewards are all equal (all right or all wrong), gets exactly 0.

    Example: rewards [1, 0, 0, 1], one group: mean 0.5, std sqrt(4 * 0.25 / 3) = 0.57735,
    so advantages [0.866, -0.866, -0.866, 0.866] (the n-std would give +-1.0).
    """
    r, mean, std, flat = _group_stats(rewards, group_ids)
    return torch.where(flat, torch.zeros_like(r), (r - mean) / (std + eps))  # (N,)


@register_advantage("drgrpo")
def drgrpo_advantage(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """(N,) float, (N,) long -> (N,). Dr. GRPO (arXiv 2503.20783): r - group mean, no std.

    Dividing by the std up-weights groups that are nearly all right or all wrong; Dr. GRPO
    drops it. `eps` is unused, kept so every estimator has one signature. All-equal groups
    and singletons get exactly 0. Example: rewards [1, 0, 0, 1] -> [0.5, -0.5, -0.5, 0.5].
    """
    r, mean, _, flat = _group_stats(rewards, group_ids)
    return torch.where(flat, torch.zeros_like(r), r - mean)  # (N,)


def group_metrics(rewards: Tensor, group_ids: Tensor) -> dict[str, float]:
    """(N,), (N,) -> {groups, groups_all_equal, frac_all_equal, reward_mean}.

    SPARK does not filter all-right / all-wrong groups (they get zero advantage), but how
    many there were says how much of the batch carried no signal.
    """
    _, _, _, flat = _group_stats(rewards, group_ids)
    _, inv = torch.unique(group_ids, return_inverse=True)  # (N,)
    G = int(inv.max()) + 1 if inv.numel() else 0
    # flat is per rollout; a group is all-equal iff any (hence every) member is flagged.
    flat_g = torch.zeros(G, dtype=torch.bool, device=flat.device).index_fill_(0, inv[flat], True)
    n_flat = int(flat_g.sum())
    return {"groups": float(G), "groups_all_equal": float(n_flat),
            "frac_all_equal": n_flat / G if G else 0.0,
            "reward_mean": float(rewards.float().mean()) if rewards.numel() else 0.0}


def agg_loss(values: Tensor, mask: Tensor, mode: str = "token-mean") -> Tensor:
    """(B, T), (B, T) bool/0-1 -> scalar: aggregate per-token values over unmasked tokens.

    - `token-mean` (the paper's choice): sum over every unmasked token of the batch / their
      count, so long responses weigh in proportion to their length.
    - `seq-mean-token-mean`: mean over each sequence's unmasked tokens, then mean over the
      sequences that have at least one (an empty row is skipped, not counted as 0).
    Masked entries are never read (inf or NaN padding does not leak); an all-masked batch
    gives 0. With gradient accumulation over micro-batches, token-mean of each micro-batch is
    not the token-mean of the whole batch; weight micro-batches by their token counts.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown agg mode {mode!r}; known: {list(AGG_MODES)}")
    m = mask.bool()  # (B, T)
    v = torch.where(m, values, torch.zeros_like(values))  # (B, T) padding can hold inf/NaN
    if mode == "token-mean":
        return v.sum() / m.sum().clamp(min=1)
    per_tok = m.sum(-1)  # (B,)
    seq = v.sum(-1) / per_tok.clamp(min=1)  # (B,)
    has = per_tok > 0  # (B,)
    return (seq * has).sum() / has.sum().clamp(min=1)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """(B, T), (B, T) -> (B, T). Schulman's k3: exp(ref - logp) - (ref - logp) - 1 >= 0.

    Unbiased for KL(pi || ref) on tokens sampled from pi, and never negative per token
    (http://joschu.net/blog/kl-approx.html). The difference is clamped like the log-ratio.
    """
    d = (ref_logprobs - logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # (B, T)
    return torch.exp(d) - d - 1


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.001,
    agg: str = "token-mean",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO surrogate + beta * k3 KL - entropy_coef * entropy -> (loss, metrics).

    Shapes: logprobs, old_logprobs, mask, ref_logprobs, entropy (B, T); advantages (B,),
    broadcast over each sequence's tokens, or (B, T) per token (`judge_reward: expected`). Per token, ratio = exp(logp - old_logp) and
    pg = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A); `clip_high` >
    `clip_low` is DAPO's clip-higher (arXiv 2503.14476). The KL is in the loss (the paper:
    k3, beta 0.001); with `ref_logprobs` None or beta 0 there is no KL term and kl reports 0.
    old_logprobs, ref_logprobs and advantages are constants: they are detached.

    metrics (floats, each aggregated by `agg_loss` with the same mask and mode as the loss):
    loss, policy_loss, kl, ratio_mean, clip_frac_low (A < 0 and ratio < 1 - clip_low: the
    low clip is active), clip_frac_high (A > 0 and ratio > 1 + clip_high); `entropy` only
    when an entropy tensor is given (absent otherwise, so no NaN reaches the logger).
    """
    if logprobs.dim() != 2 or advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(f"need logprobs (B, T) and advantages (B,) or (B, T), got {tuple(logprobs.shape)} "
                         f"and {tuple(advantages.shape)}")
    A = advantages.detach()
    A = A.unsqueeze(-1) if A.dim() == 1 else A  # (B, 1) or (B, T)
    log_ratio = (logprobs - old_logprobs.detach()).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    surr = ratio * A  # (B, T)
    surr_clip = ratio.clamp(1 - clip_low, 1 + clip_high) * A  # (B, T) constant where clipped
    pg = -torch.minimum(surr, surr_clip)  # (B, T)
    per_token = pg
    if ref_logprobs is not None and beta != 0:
        kl = k3_kl(logprobs, ref_logprobs.detach())  # (B, T)
        per_token = pg + beta * kl
    else:
        kl = torch.zeros_like(pg)
    loss = agg_loss(per_token, mask, agg)
    if entropy is not None and entropy_coef > 0:
        loss = loss - entropy_coef * agg_loss(entropy, mask, agg)

    with torch.no_grad():
        def mean(x: Tensor) -> float:
            return float(agg_loss(x.to(pg.dtype), mask, agg))

        metrics = {
            "loss": float(loss.detach()),
            "policy_loss": mean(pg),
            "kl": mean(kl),
            "ratio_mean": mean(ratio),
            "clip_frac_low": mean((A < 0) & (ratio < 1 - clip_low)),
            "clip_frac_high": mean((A > 0) & (ratio > 1 + clip_high)),
        }
        if entropy is not None:
            metrics["entropy"] = mean(entropy)
    return loss, metrics


POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, float]]]] = {"clipped": policy_loss}


def policy_loss_fn(name: str) -> Callable[..., tuple[Tensor, dict[str, float]]]:
    """The policy loss registered as `name`; KeyError lists the known names."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown policy loss {name!r}; known: {sorted(POLICY_LOSSES)}") from None


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """(B, T, V), (B, T) long -> (B, T) float32: log_softmax(logits / temperature)[tokens].

    In float32 because bf16 keeps ~3 significant digits: a log-prob near -5 can be off by
    0.016, a 1.6% ratio error before any update. The temperature must be the sampler's, or
    ratio != 1 on the first step. Computed as gathered logit - logsumexp, which skips
    log_softmax's full (B, T, V) output.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float() / temperature  # (B, T, V)
    picked = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(z, dim=-1)  # (B, T)


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """(B, T, V) -> (B, T) float32: entropy -sum p log p of softmax(logits / temperature)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    p = logp.exp()  # (B, T, V)
    # A -inf logit (masked or padded vocabulary) has p = 0 and logp = -inf: 0 * -inf is NaN,
    # so zero logp there first (masked_fill also keeps NaN out of the backward pass).
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)  # (B, T)
