"""Log-probs and entropy of chosen positions without a (B, T, V) float32 tensor.

`model(...).logits` for a micro-batch is (rows, W, V): for a 151,936-token vocabulary, 16
sequences of 1,024 tokens are 10 GB in float32, and a log-softmax or entropy makes more
copies of that size. Only the response positions are needed, and each position's
log-softmax is independent of the others, so:

1. run the model's decoder (everything but the LM head) to get hidden states (rows, W, H);
2. pick the N hidden vectors whose logits are needed, (N, H);
3. run the LM head over blocks of `block` positions: (block, V) float32 logits, log-sum-exp,
   the target's logit, the entropy; under autograd, when there is more than one block, each
   is checkpointed, so its logits are recomputed in the backward pass instead of kept (a
   single block is kept: recomputing it would cost a head matmul and a log-softmax and save
   no memory, since its forward's peak is reached anyway). The entropy is left out of the
   autograd graph unless it is trained on (`entropy="grad"`): as a metric it needs no
   backward, and a caller that needs only log-probs (the KL reference) skips it (`"none"`).

Peak memory then grows with block x V, not with batch x length x V. The result equals the
direct computation up to float rounding (tested within 1e-5). `head_parts` finds the
decoder and the head; an architecture where the logits are not `head(decoder(...))` (a
final soft-cap, a logit scale) is detected once per model by `blocked_matches`, and callers
fall back to full logits for it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

BLOCK = 512  # positions per LM-head block: 512 x 151,936 x 4 bytes = 311 MB of float32 logits
AUTO_MIN_VOCAB = 32_768  # `blocked_logits: auto` uses blocks for vocabularies this large


def head_parts(model):
    """(decoder, lm_head) of a Hugging Face causal LM, or None when they cannot be found."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = None
    if hasattr(model, "get_decoder"):
        try:
            decoder = model.get_decoder()
        except (AttributeError, NotImplementedError):
            decoder = None
    decoder = decoder if decoder is not None and decoder is not model else getattr(model, "model", None)
    if head is None or decoder is None:
        return None
    softcap = getattr(model.config, "final_logit_softcapping", None) or getattr(
        getattr(model.config, "text_config", None), "final_logit_softcapping", None)
    if softcap or getattr(model.config, "logit_scale", None) or getattr(model.config, "logits_scaling", None):
        return None  # logits are not head(hidden): use the model's own forward
    return decoder, head


def use_blocks(model, mode: str) -> bool:
    """Whether `blocked_logits` = mode (auto | always | never) selects blocks for this model."""
    if mode == "never" or head_parts(model) is None:
        return False
    return mode == "always" or model.get_output_embeddings().weight.shape[0] >= AUTO_MIN_VOCAB


def hidden_states(model, inputs: dict) -> Tensor:
    """(rows, W, H): the decoder's last hidden states (after its final norm)."""
    decoder, _ = head_parts(model)
    kw = {k: v for k, v in inputs.items() if k != "use_cache"}
    return decoder(**kw, use_cache=False).last_hidden_state


def _block_stats(head, h: Tensor, tgt: Tensor, temperature: float, entropy: str = "grad") -> tuple[Tensor, Tensor]:
    """(n, H), (n,) -> log p(tgt) (n,) and entropy (n,), float32 (float64 for a float64 model),
    under softmax(head(h) / T); `entropy`: grad (with its gradient) | value (without) | none (zeros)."""
    # log_softmax (max subtracted before the sum) rounds like the direct path's token_entropy;
    # z - logsumexp(z) differs from it by ~1e-4 in the entropy at V = 151,936.
    if torch.is_autocast_enabled(h.device.type):
        # Under bf16 autocast the trunk runs in bf16, the head stays float32: bf16 logits near
        # 20 are off by ~0.06, which would put that much noise in every log-prob and ratio.
        with torch.autocast(h.device.type, enabled=False):
            z = head(h.float())
    else:
        z = head(h)
    z = z if z.dtype == torch.float64 else z.float()  # float32 at least (float64 kept: the tests' reference)
    logp = torch.log_softmax(z / temperature if temperature != 1 else z, dim=-1)  # (n, V)
    picked = logp.gather(-1, tgt[:, None]).squeeze(-1)  # (n,)
    if entropy == "none":
        return picked, torch.zeros_like(picked)  # (n,), no gradient
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        p = logp.exp()
        ent = -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)  # (n,)
    return picked, ent


def gathered_stats(head, hidden: Tensor, tgt: Tensor, temperature: float = 1.0, block: int = BLOCK,
                   entropy: str = "grad") -> tuple[Tensor, Tensor]:
    """(N, H), (N,) -> (log-probs (N,), entropies (N,)), float32, the head run `block` rows at a time.

    Under autograd, with N > block, each block is checkpointed (its (block, V) logits recomputed
    in backward); `entropy`: grad | value (no gradient) | none (zeros, not computed).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if entropy not in ("grad", "value", "none"):
        raise ValueError(f"entropy must be grad, value or none, got {entropy!r}")
    outs_lp, outs_ent = [], []
    recompute = torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > block
    for s in range(0, hidden.shape[0], block):
        h, t = hidden[s : s + block], tgt[s : s + block]
        if recompute:
            lp, ent = checkpoint(_block_stats, head, h, t, temperature, entropy, use_reentrant=False)
        else:
            lp, ent = _block_stats(head, h, t, temperature, entropy)
        outs_lp.append(lp)
        outs_ent.append(ent)
    if not outs_lp:
        z = hidden.new_zeros((0,), dtype=torch.float32)
        return z, z
    return torch.cat(outs_lp), torch.cat(outs_ent)


def response_stats(model, inputs: dict, where: Tensor, tokens: Tensor, mask: Tensor, temperature: float = 1.0,
                   block: int = BLOCK, entropy: str = "grad") -> tuple[Tensor, Tensor]:
    """Log-probs and entropies (B, R) of `tokens` (B, R) predicted at flat positions `where` (B, R)
    of model(**inputs), computed only where `mask` (B, R) is set (0 elsewhere); float32
    (`entropy`: as in `gathered_stats`)."""
    hidden = hidden_states(model, inputs)  # (rows, W, H)
    flat = hidden.reshape(-1, hidden.shape[-1])  # (rows * W, H)
    m = mask.bool()
    _, head = head_parts(model)
    lp, ent = gathered_stats(head, flat[where[m]], tokens[m], temperature, block, entropy)  # (N,), (N,)
    out_lp = torch.zeros(tokens.shape, dtype=lp.dtype, device=lp.device).masked_scatter(m, lp)
    out_ent = torch.zeros(tokens.shape, dtype=ent.dtype, device=lp.device).masked_scatter(m, ent)
    return out_lp, out_ent


def blocked_matches(model, atol: float = 1e-4) -> bool:
    """Whether head(decoder(x)) gives the model's own logits on a short input (checked once per model)."""
    parts = head_parts(model)
    if parts is None:
        return False
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.tensor([[t % vocab for t in (5, 6, 7, 8, 9)]], device=next(model.parameters()).device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            direct = model(input_ids=ids, use_cache=False).logits.float()
            decoder, head = parts
            mine = head(decoder(input_ids=ids, use_cache=False).last_hidden_state).float()
        return bool(torch.allclose(direct, mine, atol=atol, rtol=1e-4))
    finally:
        model.train(was)
