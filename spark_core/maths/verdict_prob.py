"""P(right verdict | prompt, own trace): the judge's expected reward, teacher-forced.

For `spark.judge_reward: expected` (spark_core/maths/judge_reward.py). A judge response ends in
`\\boxed{Yes}` / `\\boxed{No}` (or A / B); its verdict position is the response token in which
the last box's content begins. The model is run on the prompt and the response up to that
token, once, and its next-token distribution (at the sampling temperature) is summed over the
tokens that would start each option: a token whose text is the part of the verdict token
before the verdict (`lead`, usually empty, `{` where the tokenizer merged the brace in) followed
by a prefix of the option, or by the whole option and a non-letter. Options compare
case-insensitively, as the verifier's labels do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


BOX = "\\boxed{"
BATCH = 8  # sequences per forward pass


@dataclass(frozen=True)
class VerdictSite:
    """Where a response's verdict begins: response token `index`, and the text of that token before it."""

    index: int
    lead: str


def verdict_site(tokenizer, token_ids: Sequence[int]) -> VerdictSite | None:
    """The token in which the last `\\boxed{`'s content begins, or None (no box, or an empty one)."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    at = text.rfind(BOX)
    if at < 0:
        return None
    c = at + len(BOX)
    while c < len(text) and text[c] == " ":
        c += 1
    if c >= len(text) or text[c] == "}":
        return None
    def upto(j: int) -> int:  # length of the decoded text of token_ids[:j]
        return len(tokenizer.decode(list(token_ids[:j]), skip_special_tokens=True))

    # The first j whose prefix through token j passes c, by bisection (prefix lengths only grow):
    # log n decodes instead of n for a 1,024-token response.
    lo, hi = 0, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if upto(mid + 1) > c:
            hi = mid
        else:
            lo = mid + 1
    return VerdictSite(lo, text[upto(lo):c]) if lo < len(token_ids) else None


_PIECES: dict[tuple, list[str]] = {}  # each token's text, per tokenizer
_OPTION_TOKENS: dict[tuple, list[int]] = {}


def _starts_option(piece: str, lead: str, option: str) -> bool:
    if not piece.startswith(lead):
        return False
    rest, opt = piece[len(lead):].casefold(), option.casefold()
    if not rest:
        return False
    return opt.startswith(rest) or (rest.startswith(opt) and not rest[len(opt):len(opt) + 1].isalnum())


def option_tokens(tokenizer, lead: str, option: str) -> list[int]:
    """Token ids whose text starts the option after `lead` (cached per tokenizer, lead and option)."""
    tk = (getattr(tokenizer, "name_or_path", ""), len(tokenizer))
    if tk not in _PIECES:
        _PIECES[tk] = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
    key = tk + (lead, option)
    if key not in _OPTION_TOKENS:
        _OPTION_TOKENS[key] = [i for i, piece in enumerate(_PIECES[tk]) if _starts_option(piece, lead, option)]
    return _OPTION_TOKENS[key]


@torch.no_grad()
def right_verdict_probability(model, tokenizer, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                              labels: Sequence[str], temperature: float = 1.0, device: str | torch.device = "cpu"
                              ) -> tuple[list[float], list[int | None]]:
    """Per response: (P(the label's option at its verdict position), the verdict token index);
    (0.0, None) for a response without a verdict. Left-padded batches of `BATCH`, one logit row each."""
    sites = [verdict_site(tokenizer, r) for r in response_ids]
    probs = [0.0] * len(sites)
    todo = [i for i, s in enumerate(sites) if s is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was = model.training
    model.eval()
    try:
        for s in range(0, len(todo), BATCH):
            chunk = todo[s : s + BATCH]
            rows = [list(prompt_ids[i]) + list(response_ids[i][: sites[i].index]) for i in chunk]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # (B, W)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)  # (B, W)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, W): left padding must not shift positions
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                           logits_to_keep=1).logits[:, -1, :].float()  # (B, V)
            p = torch.softmax(logits / temperature, dim=-1).cpu()  # (B, V)
            for row, i in enumerate(chunk):
                toks = option_tokens(tokenizer, sites[i].lead, labels[i])  # the label is the right option
                probs[i] = float(p[row, toks].sum()) if toks else 0.0
    finally:
        model.train(was)
    return probs, [s.index if s is not None else None for s in sites]
