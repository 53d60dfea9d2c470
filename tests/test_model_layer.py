import dataclasses
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from spark_core.model.checkpoint import (
    CheckpointError,
    build_model,
    build_tokenizer,
    chat_prompt,
    load_checkpoint,
    save_checkpoint,
)
from spark_cli.main import app
from spark_core.config import TinyModelConfig
from spark_core.model.rollout import EngineError, HFEngine, SamplingSpec, make_engine, sample_next

ARCH = TinyModelConfig(hidden=32, layers=2, heads=2, intermediate=64, max_positions=128)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()
    save_checkpoint(build_model(tok, ARCH, seed=0), tok, path)
    return path


def test_round_trip_through_auto_classes(ckpt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.chat_template and tok.eos_token == "<|end|>"
    text = chat_prompt(tok, "12+34")
    assert text == "<|user|>12+34<|end|><|assistant|>"
    ids = tok(text + "12+34=46. \\boxed{46}", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "12+3412+34=46. \\boxed{46}"
    # every digit is one token, so arithmetic is seen digit by digit
    assert len(tok("1234567890", add_special_tokens=False)["input_ids"]) == 10
    fresh = build_model(build_tokenizer(), ARCH, seed=0)
    for (n1, p1), (n2, p2) in zip(fresh.state_dict().items(), model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert (ckpt / "generation_config.json").is_file()


def test_same_seed_same_samples(ckpt):
    eng = HFEngine(ckpt)
    spec = SamplingSpec(group_size=3, max_new_tokens=12, seed=5)
    a = eng.generate(["1+1", "23-4", "7"], spec)
    b = eng.generate(["1+1", "23-4", "7"], spec)
    c = eng.generate(["1+1", "23-4", "7"], SamplingSpec(group_size=3, max_new_tokens=12, seed=6))
    ids = lambda r: [[s.token_ids for s in g] for g in r]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert [len(g) for g in a] == [3, 3, 3]
    assert all(s.prompt_index == i and s.sample_index == j for i, g in enumerate(a) for j, s in enumerate(g))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_a_fresh_forward_pass(ckpt, temperature):
    model, tok = load_checkpoint(ckpt)
    eng = HFEngine(model, tok)
    prompts = ["1+1", "a much longer prompt 12+34-5", "9"]  # different lengths: left padding in play
    groups = eng.generate(prompts, SamplingSpec(group_size=4, max_new_tokens=16, temperature=temperature, seed=1))
    worst = 0.0
    for g in groups:
        for s in g:
            ids = torch.tensor([s.prompt_ids + s.token_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].float() / temperature, -1)
            start = len(s.prompt_ids) - 1
            ref = logp[start : start + len(s.token_ids)].gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
            worst = max(worst, (ref - torch.tensor(s.logprobs)).abs().max().item())
    assert worst < 1e-4


def test_preallocated_cache_samples_what_the_growing_cache_samples(ckpt, monkeypatch):
    """The in-place KV cache (spark_core/model/kv_cache.py) changes where keys and values live, not
    their values: the same seed gives the same tokens and bit-equal log-probs as transformers'
    DynamicCache, with left padding and rows dropped as they finish."""
    import spark_core.model.rollout as rollout
    from spark_core.model.kv_cache import PreallocatedLayer

    model, tok = load_checkpoint(ckpt)
    eng = HFEngine(model, tok)
    prompts = ["1+1", "a much longer prompt 12+34-5", "9", "88-7"]
    spec = SamplingSpec(group_size=4, max_new_tokens=24, temperature=1.0, seed=3)
    used = []
    real = rollout.preallocated_cache

    def spy(m, capacity):
        cache = real(m, capacity)
        used.append(cache)
        return cache

    monkeypatch.setattr(rollout, "preallocated_cache", spy)
    new = eng.generate(prompts, spec)
    assert used and all(isinstance(layer, PreallocatedLayer) for layer in used[0].layers)
    monkeypatch.setattr(rollout, "preallocated_cache", lambda m, capacity: None)  # the model's own DynamicCache
    old = eng.generate(prompts, spec)
    pairs = [(a, b) for x, y in zip(new, old) for a, b in zip(x, y)]
    assert len({len(a.token_ids) for a, _ in pairs}) > 1  # rows finished at different steps
    assert all(a.token_ids == b.token_ids and a.logprobs == b.logprobs for a, b in pairs)


def test_preallocated_cache_only_for_full_attention():
    from transformers import LlamaConfig, Qwen2Config

    from spark_core.model.kv_cache import preallocated_cache

    class M:
        def __init__(self, config):
            self.config = config

    assert preallocated_cache(M(LlamaConfig(num_hidden_layers=2)), 8) is not None
    sliding = Qwen2Config(use_sliding_window=True, sliding_window=8, num_hidden_layers=2, max_window_layers=0)
    assert preallocated_cache(M(sliding), 8) is None  # a window is not a prefix: the model's own cache


def test_finish_reasons_for_eos_and_length(ckpt):
    model, tok = load_checkpoint(ckpt)
    eng = HFEngine(model, tok)
    spec = SamplingSpec(group_size=2, max_new_tokens=5, seed=0)
    out = eng.generate(["1+1"], spec)[0]
    assert all(s.finish_reason == "length" and len(s.token_ids) == 5 for s in out if tok.eos_token_id not in s.token_ids)
    eos = tok.eos_token_id
    calls = {"n": 0}

    def force_eos_on_third_token(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 3:  # prefill, token 2, token 3 -> EOS
            output = output.clone()
            output[..., eos] += 1e4
        return output

    handle = model.lm_head.register_forward_hook(force_eos_on_third_token)
    try:
        s = eng.generate(["1+1"], SamplingSpec(group_size=1, max_new_tokens=10, seed=0))[0][0]
    finally:
        handle.remove()
    assert s.finish_reason == "stop"
    assert len(s.token_ids) == 3 and s.token_ids[-1] == eos and len(s.logprobs) == 3
    assert "<|end|>" not in s.text


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {sample_next(logits, 1.0, 0.7, g)[0].item() for _ in range(200)}
    assert seen == {0, 1}
    tok, lp = sample_next(logits, 0.0, 1.0, None)
    assert tok.item() == 0 and abs(lp.item() - torch.log(torch.tensor(0.6)).item()) < 1e-6


def test_bad_model_dirs_fail_with_one_line(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path / "empty")
    plain = tmp_path / "plain"
    shutil.copytree(ckpt, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="no chat template"):
        load_checkpoint(plain)
    r = CliRunner().invoke(app, ["sample", "--checkpoint", str(plain), "1+1"])
    assert r.exit_code == 2 and "no chat template" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["sample", "--checkpoint", str(tmp_path / "missing"), "1+1"])
    assert r.exit_code == 2 and "no such model directory" in r.output


def test_sample_cli(ckpt):
    r = CliRunner().invoke(app, ["sample", "--checkpoint", str(ckpt), "-n", "2", "--max-new-tokens", "4", "12+34"])
    assert r.exit_code == 0, r.output
    assert r.output.count("[") >= 2


def test_unknown_engine(ckpt):
    with pytest.raises(EngineError, match="unknown engine"):
        make_engine("nope", ckpt)


def test_ignore_eos_samples_every_token(ckpt):
    """Benchmarks compare engines at equal work: with ignore_eos every row runs to max_new_tokens."""
    eng = make_engine("hf", ckpt, device="cpu")
    eng.eos_ids = list(range(len(eng.tokenizer)))  # every token ends a row: without the flag all stop at once
    spec = SamplingSpec(group_size=4, temperature=1.0, max_new_tokens=40, seed=0)
    free = eng.generate(["1+1", "23-4"], spec)
    full = eng.generate(["1+1", "23-4"], dataclasses.replace(spec, ignore_eos=True))
    assert all(len(s.token_ids) == 1 and s.finish_reason == "stop" for g in free for s in g)
    assert all(len(s.token_ids) == 40 and s.finish_reason == "length" for g in full for s in g)


def test_inverse_cdf_draws_each_index_at_its_weight():
    from spark_core.model.rollout import inverse_cdf

    w = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    idx = inverse_cdf(w, g)
    counts = torch.bincount(idx, minlength=6).double() / len(idx)
    assert counts[[0, 2, 5]].sum() == 0  # a zero weight is never drawn, the last one included
    assert torch.allclose(counts[[1, 3, 4]], torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.03)
    # unnormalised weights, and the same draw from the same generator state
    assert torch.equal(inverse_cdf(w * 7.0, torch.Generator().manual_seed(0)), idx)
