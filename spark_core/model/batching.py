"""Rollouts as model inputs: the trainer's sequences, padded or packed rows, and the check that
packing is safe for a model.

Padded: one right-padded row per sequence. Packed: sequences placed first-fit into rows as wide
as the longest one, positions restarting at 0 for each and no attention mask, so Hugging Face's
mask builder keeps every sequence to itself (it reads the restarts of `position_ids`); it saves
work when a few long sequences would set the padded width. Either way each response token gets
the flat position whose logits predict it, so the loss code never sees the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Sequence_:
    """One rollout as the trainer sees it."""

    prompt_ids: list[int]
    response_ids: list[int]
    old_logprobs: list[float]
    advantage: float
    verdict_index: int | None = None
    """`judge_reward: expected`: from this response token on, `verdict_advantage` replaces `advantage`."""
    verdict_advantage: float = 0.0


def pack_rows(lengths: Sequence[int], width: int) -> list[tuple[int, int]]:
    """First-fit decreasing: (row, offset) per sequence so that no row exceeds `width`.

    Deterministic (ties by index); every length must be <= width.
    """
    if any(n > width for n in lengths):
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit rows of {width}")
    fill: list[int] = []
    places: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, used in enumerate(fill) if used + lengths[i] <= width), len(fill))
        if row == len(fill):
            fill.append(0)
        places[i] = (row, fill[row])
        fill[row] += lengths[i]
    return places


def layout(micro: Sequence[Sequence_], R: int, packed: bool, pad_id: int,
           device: torch.device) -> tuple[dict, torch.Tensor]:
    """Model inputs for a micro-batch and, per response token, the flat position predicting it.

    Returns (kwargs for model(...) on `device`, where (B, R) long on the CPU: index into the
    flattened (rows * W) positions whose logits predict each response token; 0 past a response's
    end, masked). `R` is the longest response.
    """
    lengths = [len(x.prompt_ids) + len(x.response_ids) for x in micro]
    W = max(lengths)
    places = pack_rows(lengths, W) if packed else [(i, 0) for i in range(len(micro))]
    rows = 1 + max(r for r, _ in places)
    ids = torch.full((rows, W), pad_id, dtype=torch.long)  # (rows, W)
    where = torch.zeros((len(micro), R), dtype=torch.long)  # (B, R)
    for i, (x, (row, off)) in enumerate(zip(micro, places)):
        p, r = len(x.prompt_ids), len(x.response_ids)
        ids[row, off : off + p + r] = torch.tensor(x.prompt_ids + x.response_ids)
        where[i, :r] = row * W + off + p - 1 + torch.arange(r)
    if not packed:
        attn = (torch.arange(W)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, W)
        return {"input_ids": ids.to(device), "attention_mask": attn.to(device)}, where
    pos = torch.zeros((rows, W), dtype=torch.long)  # (rows, W): 0.. per sequence, the tail its own run
    used = [0] * rows
    for n, (row, off) in zip(lengths, places):
        pos[row, off : off + n] = torch.arange(n)
        used[row] = max(used[row], off + n)
    for row in range(rows):
        pos[row, used[row]:] = torch.arange(W - used[row])
    return {"input_ids": ids.to(device), "position_ids": pos.to(device), "use_cache": False}, where


def response_tokens(micro: Sequence[Sequence_], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The responses right-padded: tokens (B, R) long and their mask (B, R) bool, on the CPU."""
    B, R = len(micro), max(len(x.response_ids) for x in micro)
    tokens = torch.full((B, R), pad_id, dtype=torch.long)  # (B, R)
    mask = torch.zeros((B, R), dtype=torch.bool)  # (B, R)
    for i, x in enumerate(micro):
        tokens[i, : len(x.response_ids)] = torch.tensor(x.response_ids)
        mask[i, : len(x.response_ids)] = True
    return tokens, mask


def old_logprobs(micro: Sequence[Sequence_], R: int) -> torch.Tensor:
    """(B, R) float32: the sampling-time log-probs, 0 past each response's end."""
    old = torch.zeros((len(micro), R))  # (B, R)
    for i, x in enumerate(micro):
        old[i, : len(x.response_ids)] = torch.tensor(x.old_logprobs, dtype=torch.float32)
    return old


def advantages(micro: Sequence[Sequence_], R: int) -> torch.Tensor:
    """(B,) float32, or (B, R) per token when a sequence carries a verdict index
    (`judge_reward: expected`: the verdict's own advantage from that token on)."""
    adv = torch.tensor([x.advantage for x in micro], dtype=torch.float32)  # (B,)
    if any(x.verdict_index is not None for x in micro):
        adv = adv[:, None].repeat(1, R)  # (B, R)
        for i, x in enumerate(micro):
            if x.verdict_index is not None:
                adv[i, x.verdict_index:] = x.verdict_advantage
    return adv


def response_logits(model, inputs: dict, where: torch.Tensor) -> torch.Tensor:
    """(B, R, V): the logits at the flat positions `where` (B, R) of model(**inputs)."""
    logits = model(**inputs).logits  # (rows, W, V)
    flat = logits.reshape(-1, logits.shape[-1])  # (rows * W, V)
    return flat[where]  # (B, R, V)


def packing_matches(model, pad_id: int, device, atol: float = 1e-4) -> bool:
    """Whether two packed sequences give the logits they give padded (one short forward each).

    An architecture whose attention does not read sequence boundaries from `position_ids` would
    let packed sequences see each other; the trainer then pads instead."""
    a, b = [5, 6, 7, 8, 9, 10], [11, 12, 13]
    vocab = model.get_input_embeddings().num_embeddings
    a, b = [t % vocab for t in a], [t % vocab for t in b]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids = torch.tensor([a, b + [pad_id] * 3], device=device)
            attn = torch.tensor([[1] * 6, [1] * 3 + [0] * 3], device=device)
            padded = model(input_ids=ids, attention_mask=attn).logits  # (2, 6, V)
            packed = model(input_ids=torch.tensor([a + b], device=device),
                           position_ids=torch.tensor([list(range(6)) + list(range(3))], device=device),
                           use_cache=False).logits  # (1, 9, V)
        return bool(torch.allclose(packed[0, :6], padded[0], atol=atol) and torch.allclose(packed[0, 6:], padded[1, :3], atol=atol))
    finally:
        model.train(was)
