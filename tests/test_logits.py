"""Blocked log-probs (spark_core/model/logits.py) equal the direct computation at a real vocabulary size."""

import copy

import pytest
import torch

from spark_core.maths.grpo import token_entropy, token_logprobs
from spark_core.model.logits import blocked_matches, gathered_stats, response_stats, use_blocks
from spark_core.model.trainer import Sequence_, Trainer, TrainSettings

VOCAB = 151_936  # Qwen2.5's vocabulary: what makes (B, T, V) float32 tensors large


@pytest.fixture(scope="module")
def qwen_shaped():
    """A randomly initialised Qwen2 causal LM with the real vocabulary and an untied head, tiny otherwise."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # the default init gives near-uniform logits; spread them so entropy varies
        model.lm_head.weight.normal_(0, 0.5)
    return model


def _inputs(B=3, W=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, W), generator=g)
    lengths = torch.tensor([W, W - 5, W - 9])[:B]
    attn = (torch.arange(W)[None] < lengths[:, None]).long()
    R = 6
    where = torch.stack([(n - R - 1) + torch.arange(R) + i * W for i, n in enumerate(lengths.tolist())])  # (B, R)
    tokens = torch.randint(0, VOCAB, (B, R), generator=g)
    mask = torch.ones((B, R), dtype=torch.bool)
    mask[2, 4:] = False
    return {"input_ids": ids, "attention_mask": attn}, where, tokens, mask


def test_blocked_logprobs_and_entropy_equal_direct_within_1e5(qwen_shaped):
    model = qwen_shaped.eval()
    inputs, where, tokens, mask = _inputs()
    assert use_blocks(model, "auto") and blocked_matches(model)
    with torch.no_grad():
        logits = model(**inputs).logits.reshape(-1, VOCAB)[where]  # (B, R, V)
        direct_lp = token_logprobs(logits, tokens, 0.7)
        direct_ent = token_entropy(logits, 0.7)
        lp, ent = response_stats(model, inputs, where, tokens, mask, temperature=0.7, block=4)
    assert torch.allclose(lp[mask], direct_lp[mask], atol=1e-5)
    assert torch.allclose(ent[mask], direct_ent[mask], atol=1e-5)
    assert (lp[~mask] == 0).all() and (ent[~mask] == 0).all()


@pytest.mark.parametrize("block", [5, 512])
def test_blocked_gradients_equal_direct(qwen_shaped, block):
    """Blocks give the gradient of the direct loss: checkpointed ones (block 5: the backward
    recomputes each) and a single kept block (512 > the 16 positions: no recomputation)."""
    inputs, where, tokens, mask = _inputs(seed=1)
    a, b = copy.deepcopy(qwen_shaped).train(), copy.deepcopy(qwen_shaped).train()
    logits = a(**inputs).logits.reshape(-1, VOCAB)[where]
    n = mask.sum()
    loss_a = (-(token_logprobs(logits, tokens) * mask).sum() + (token_entropy(logits) * mask).sum() * 0.1) / n
    loss_a.backward()
    lp, ent = response_stats(b, inputs, where, tokens, mask, block=block)
    loss_b = (-(lp * mask).sum() + (ent * mask).sum() * 0.1) / n
    loss_b.backward()
    assert abs(loss_a.item() - loss_b.item()) < 1e-5
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        # float32 sums over 151,936 logits in another order: equal to a relative 1e-4 of the largest entry
        scale = pa.grad.abs().max().item()
        assert (pa.grad - pb.grad).abs().max().item() <= 1e-4 * scale + 1e-7, name


def test_gathered_stats_rejects_bad_temperature_and_handles_empty(qwen_shaped):
    head = qwen_shaped.get_output_embeddings()
    with pytest.raises(ValueError, match="temperature"):
        gathered_stats(head, torch.zeros(2, 32), torch.zeros(2, dtype=torch.long), temperature=0)
    lp, ent = gathered_stats(head, torch.zeros(0, 32), torch.zeros(0, dtype=torch.long))
    assert lp.shape == (0,) and ent.shape == (0,)


def test_trainer_blocked_equals_full_logits(qwen_shaped):
    """One GRPO optimizer step with blocked log-probs is fed the gradients the full-logits path gives."""
    g = torch.Generator().manual_seed(3)
    batch = [Sequence_(torch.randint(0, VOCAB, (7,), generator=g).tolist(), torch.randint(0, VOCAB, (5,), generator=g).tolist(),
                       [-11.0] * 5, float(a)) for a in (1.0, -1.0, 0.5, -0.5)]
    out = []
    for mode in ("always", "never"):
        model = copy.deepcopy(qwen_shaped)
        t = Trainer(model, copy.deepcopy(qwen_shaped), TrainSettings(lr=1e-3, mini_batch_size=4, micro_batch_size=2,
                                                                      blocked_logits=mode), pad_id=0, device=torch.device("cpu"))
        grads, step = [], t.opt.step

        def spy(*args, **kwargs):
            grads.append([p.grad.detach().clone() for p in model.parameters()])
            return step(*args, **kwargs)

        t.opt.step = spy
        row = t.train_period(batch, "policy")[0]
        assert t._use_blocks() == (mode == "always") and len(grads) == 1
        out.append((row, grads[0]))
    (ra, ga), (rb, gb) = out
    assert abs(ra["loss"] - rb["loss"]) < 1e-5 and abs(ra["kl"] - rb["kl"]) < 1e-6
    # The gradients, not the stepped weights: AdamW's first step is lr * g / (|g| + eps), so an
    # entry whose gradient is float32 noise (~1e-9) moves by up to lr either way and the weights
    # differ by 2e-3 on a machine that sums in another order (CI's did), though both paths agree.
    for (name, _), grad_a, grad_b in zip(model.named_parameters(), ga, gb):
        scale = grad_a.abs().max().item()
        assert (grad_a - grad_b).abs().max().item() <= 1e-4 * scale + 1e-7, name


def test_auto_keeps_small_vocabularies_on_full_logits():
    from spark_core.model.checkpoint import build_model, build_tokenizer
    from spark_core.config import TinyModelConfig

    tok = build_tokenizer()
    model = build_model(tok, TinyModelConfig(hidden=16, layers=1, heads=2, intermediate=32), 0)
    assert not use_blocks(model, "auto") and use_blocks(model, "always") and not use_blocks(model, "never")
    assert blocked_matches(model)


def test_entropy_as_a_value_or_not_at_all(qwen_shaped):
    """`entropy`: value gives grad's numbers without a graph; none skips it (zeros), log-probs unchanged."""
    model = copy.deepcopy(qwen_shaped).train()
    inputs, where, tokens, mask = _inputs(seed=2)
    out = {e: response_stats(model, inputs, where, tokens, mask, block=block, entropy=e)
           for e in ("grad", "value", "none") for block in (5,)}
    assert out["grad"][1].requires_grad and not out["value"][1].requires_grad and not out["none"][1].requires_grad
    assert torch.equal(out["value"][1], out["grad"][1].detach())
    assert (out["none"][1] == 0).all()
    for e in ("value", "none"):
        assert torch.equal(out[e][0].detach(), out["grad"][0].detach()) and out[e][0].requires_grad
    with pytest.raises(ValueError, match="entropy"):
        gathered_stats(model.get_output_embeddings(), torch.zeros(2, 32), torch.zeros(2, dtype=torch.long), entropy="maybe")
