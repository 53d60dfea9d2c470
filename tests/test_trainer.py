import copy
import dataclasses

import pytest
import torch

from spark_core.model.checkpoint import build_model, build_tokenizer
from spark_core.config import TinyModelConfig
from spark_core.maths.grpo import grpo_advantage
from spark_core.model.rollout import HFEngine, SamplingSpec
from spark_core.data.store import write_table
from spark_core.model.trainer import Sequence_, Trainer, TrainSettings

ARCH = TinyModelConfig(hidden=32, layers=2, heads=2, intermediate=64, max_positions=128)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _model(tok, seed=0):
    return build_model(tok, ARCH, seed)


def _batch(tok, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.randint(5, 200, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(5, 200, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
        out.append(Sequence_(p, r, [-5.0] * len(r), float(torch.randn(1, generator=g))))
    return out


def _flat(model):
    return torch.cat([p.detach().cpu().flatten() for p in model.parameters()])


def test_micro_batches_give_the_same_gradient(tok):
    """Accumulating token-weighted micro-batches gives the mini-batch's token-mean gradient."""
    batch = _batch(tok)
    results = []
    for micro in (1, 3, 8):
        model = _model(tok)
        t = Trainer(model, _model(tok), TrainSettings(lr=1e-2, mini_batch_size=8, micro_batch_size=micro), tok.pad_token_id, torch.device("cpu"))
        seen = []
        t.opt.step = lambda: seen.append(torch.cat([p.grad.flatten() for p in model.parameters()]))  # (Adam's sign-like
        rows = t.train_period(batch, "policy")  # first step would hide gradient differences)
        results.append((seen[0], rows[0]))
    for grad, row in results[1:]:
        assert torch.allclose(grad, results[0][0], atol=1e-6, rtol=1e-4)
        assert row["loss"] == pytest.approx(results[0][1]["loss"], rel=1e-5)
        assert row["grad_norm"] == pytest.approx(results[0][1]["grad_norm"], rel=1e-4)


def test_rows_fit_the_updates_table_and_steps_count_both_phases(tok, tmp_path):
    t = Trainer(_model(tok), _model(tok), TrainSettings(lr=1e-3, mini_batch_size=4, micro_batch_size=2, warmup_steps=3), tok.pad_token_id)
    rows = t.train_period(_batch(tok, 8), "policy") + t.train_period(_batch(tok, 4, seed=1), "reward", lr_scale=0.5)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["phase"] for r in rows] == ["policy", "policy", "reward"]
    # one schedule across phases: warm-up 1/3, 2/3, then 3/3 scaled by the reward multiplier
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3 * 0.5])
    write_table(tmp_path, "updates", rows, iteration=0, part="train")


def test_non_finite_loss_skips_the_step(tok):
    model = _model(tok)
    before = _flat(model)
    t = Trainer(model, _model(tok), TrainSettings(lr=1e-2, mini_batch_size=8, micro_batch_size=4), tok.pad_token_id)
    batch = _batch(tok)
    batch[5].advantage = float("nan")
    (row,) = t.train_period(batch, "policy")
    assert row["skipped"] and torch.equal(_flat(model), before)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    (row,) = t.train_period(_batch(tok), "policy")  # the next good batch trains normally
    assert not row["skipped"] and not torch.equal(_flat(model), before)


def test_resume_continues_exactly(tok, tmp_path):
    s = TrainSettings(lr=1e-2, mini_batch_size=4, micro_batch_size=4, warmup_steps=2, schedule="cosine", total_steps=8)
    b1, b2 = _batch(tok, 8, seed=1), _batch(tok, 8, seed=2)
    straight = Trainer(_model(tok), _model(tok), s, tok.pad_token_id)
    straight.train_period(b1, "policy")
    straight.train_period(b2, "reward")

    first = Trainer(_model(tok), _model(tok), s, tok.pad_token_id)
    first.train_period(b1, "policy")
    first.model.save_pretrained(tmp_path)
    first.save_state(tmp_path)
    from transformers import AutoModelForCausalLM

    resumed = Trainer(AutoModelForCausalLM.from_pretrained(tmp_path), _model(tok), s, tok.pad_token_id)
    resumed.load_state(tmp_path)
    rows = resumed.train_period(b2, "reward")
    assert rows[0]["step"] == 2
    assert torch.allclose(_flat(resumed.model), _flat(straight.model), atol=1e-7)


def test_policy_periods_raise_mean_reward_on_a_learnable_task(tok):
    """Real GRPO on a real (tiny, random) model: reward a response whose first byte is a digit."""
    torch.manual_seed(0)
    model = _model(tok, seed=3)
    ref = copy.deepcopy(model)
    engine = HFEngine(model, tok, device="cpu")
    t = Trainer(model, ref, TrainSettings(lr=1e-2, mini_batch_size=64, micro_batch_size=64, beta=0.001), tok.pad_token_id, torch.device("cpu"))
    prompts = ["go", "hello", "1+1", "start"]
    digits = {tok.convert_tokens_to_ids(c) for c in "0123456789"}

    def period(i):
        groups = engine.generate(prompts, SamplingSpec(group_size=16, max_new_tokens=3, seed=i))
        flat = [s for g in groups for s in g]
        rewards = torch.tensor([1.0 if s.token_ids and s.token_ids[0] in digits else 0.0 for s in flat])
        adv = grpo_advantage(rewards, torch.tensor([s.prompt_index for s in flat]))
        t.train_period([Sequence_(s.prompt_ids, s.token_ids, s.logprobs, float(a)) for s, a in zip(flat, adv)], "policy")
        return rewards.mean().item()

    start = sum(period(i) for i in range(2)) / 2
    for i in range(2, 30):
        last = period(i)
    end = sum(period(100 + i) for i in range(2)) / 2
    assert start < 0.2 and end > start + 0.3, (start, last, end)


def test_packed_rows_give_the_padded_loss_and_gradient(tok):
    """Packing several sequences per row (positions restart, no mask) is the padded computation."""
    batch = _batch(tok, 12, seed=3) + [Sequence_(list(range(5, 25)), list(range(30, 45)), [-5.0] * 15, 0.7)]  # one long row
    grads, rows = [], []
    for packing in (False, True):
        model = _model(tok)
        t = Trainer(model, _model(tok, seed=1), TrainSettings(lr=1e-2, mini_batch_size=13, micro_batch_size=13, beta=0.01,
                                                              packing=packing), tok.pad_token_id, torch.device("cpu"))
        inputs, _ = t._layout(batch, 15, packed=packing)
        assert inputs["input_ids"].shape[0] < len(batch) if packing else inputs["input_ids"].shape[0] == len(batch)
        seen = []
        t.opt.step = lambda: seen.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        rows.append(t.train_period(batch, "policy")[0])
        grads.append(seen[0])
    assert torch.allclose(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    for key in ("loss", "kl", "entropy", "grad_norm"):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-4, abs=1e-7)


def test_pack_rows_fits_every_sequence_once():
    from spark_core.model.trainer import pack_rows

    lengths = [7, 3, 9, 2, 5, 5, 1, 9]
    places = pack_rows(lengths, 9)
    cells = set()
    for n, (row, off) in zip(lengths, places):
        assert off + n <= 9
        span = {(row, c) for c in range(off, off + n)}
        assert not span & cells  # no overlap
        cells |= span
    assert 1 + max(r for r, _ in places) == 5  # 41 tokens in rows of 9: first-fit decreasing needs 5
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([10], 9)


def test_packing_falls_back_when_the_model_ignores_sequence_boundaries(tok, monkeypatch):
    import spark_core.model.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "packing_matches", lambda *a, **k: False)
    t = Trainer(_model(tok), None, TrainSettings(mini_batch_size=4, micro_batch_size=4, packing=True), tok.pad_token_id,
                torch.device("cpu"))
    assert t._use_packing() is False
    assert t.train_period(_batch(tok, 4), "policy")[0]["skipped"] is False


def test_the_tiny_llama_reads_sequence_boundaries_from_positions(tok):
    from spark_core.model.trainer import packing_matches

    assert packing_matches(_model(tok), tok.pad_token_id, torch.device("cpu"))


def test_verdict_advantage_applies_from_its_token_on(tok):
    """`judge_reward: expected`: a verdict index at 0 with advantage x trains as a plain advantage x;
    one in the middle changes the update; verdict_advantage equal to advantage changes nothing."""
    def step(batch):
        model = _model(tok)
        Trainer(model, None, TrainSettings(lr=1e-2, mini_batch_size=8, micro_batch_size=4, beta=0), tok.pad_token_id
                ).train_period(batch, "reward")
        return _flat(model)

    base = _batch(tok, 8)
    plain = step([dataclasses.replace(x, advantage=-0.5) for x in base])
    assert torch.allclose(step([dataclasses.replace(x, verdict_index=0, verdict_advantage=-0.5) for x in base]), plain)
    same = step([dataclasses.replace(x, verdict_index=len(x.response_ids) // 2, verdict_advantage=x.advantage) for x in base])
    assert torch.allclose(same, step(base))
    split = step([dataclasses.replace(x, verdict_index=len(x.response_ids) // 2, verdict_advantage=2.0) for x in base])
    assert not torch.allclose(split, step(base))


def test_micro_batches_are_cut_from_the_mini_batch_sorted_by_length(tok):
    """Short sequences share micro-batches with short ones (less padding), and the step's gradient
    is the same whatever order the batch comes in."""
    batch = _batch(tok, 8, seed=3)
    lengths = sorted(len(x.prompt_ids) + len(x.response_ids) for x in batch)
    grads, widths = [], []
    for order in (batch, batch[::-1]):
        model = _model(tok)
        t = Trainer(model, _model(tok), TrainSettings(lr=1e-2, mini_batch_size=8, micro_batch_size=2), tok.pad_token_id,
                    torch.device("cpu"))
        seen, layout = [], t._layout
        t._layout = lambda micro, R, packed: widths.append(max(len(x.prompt_ids) + len(x.response_ids) for x in micro)) or layout(micro, R, packed)
        t.opt.step = lambda: seen.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        t.train_period(order, "policy")
        grads.append(seen[0])
    assert widths == [lengths[i + 1] for i in range(0, 8, 2)] * 2  # each micro-batch as wide as its longest
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-5)
