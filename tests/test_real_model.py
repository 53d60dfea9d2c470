"""A real pretrained model through the pipeline: Qwen2.5-Coder-0.5B-Instruct (151,936-token BPE
vocabulary, ChatML template, two end tokens), fetched by `spark model fetch`.

These tests skip when the model is not fetched (a plain checkout), and fail instead when
SPARK_REQUIRE_REAL_MODEL=1, which `.ci/run` sets after fetching it: CI always runs them.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from spark_core.model.rollout import HFEngine, SamplingSpec, encode_prompts

ROOT = Path(__file__).resolve().parents[1]
NAME = "qwen2.5-coder-0.5b-instruct"
MODEL = Path(os.environ.get("SPARK_REAL_MODEL") or ROOT / "data" / "models" / NAME)
IM_END, ENDOFTEXT = 151645, 151643


@pytest.fixture(scope="module")
def qwen_dir() -> Path:
    if not (MODEL / "spark_model.json").is_file():
        if os.environ.get("SPARK_REQUIRE_REAL_MODEL") == "1":
            pytest.fail(f"{MODEL}: the real model is required here (SPARK_REQUIRE_REAL_MODEL=1) but not fetched")
        pytest.skip(f"{MODEL} not fetched: run `spark model fetch {NAME}` (about 75 s) to run the real-model tests")
    return MODEL


@pytest.fixture(scope="module")
def engine(qwen_dir):
    torch.set_num_threads(2)
    eng = HFEngine(qwen_dir, device="cpu", dtype="float32")
    yield eng
    eng.close()


def test_the_import_declares_both_end_tokens(qwen_dir, engine):
    stamp = json.loads((qwen_dir / "spark_model.json").read_text())
    assert stamp["eos_tokens"] == ["<|im_end|>", "<|endoftext|>"] and stamp["vocabulary"] == 151_936
    assert engine.eos_ids == [IM_END, ENDOFTEXT]
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(qwen_dir).eos_token_id == [IM_END, ENDOFTEXT]


def test_token_ids_round_trip_through_the_bpe_tokenizer(engine):
    tok = engine.tokenizer
    for text in ["3 + 54 = 57. \\boxed{57}", "Natalia sold 48/2 = 24 clips in May.\n#### 72",
                 "Let $f(x)=\\frac{1}{2}x^2$; déjà vu, 数学, emoji 🙂", "  leading spaces and\ttabs  "]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert max(ids) < 151_936


def test_prompts_are_rendered_by_the_models_own_template(engine):
    tok = engine.tokenizer
    (ids,) = encode_prompts(tok, ["3+54"])
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>user\n3+54<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")  # Qwen's template adds its default system message
    (ids,) = encode_prompts(tok, ["3+54"], system="Be brief.")
    assert tok.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n3+54")


def test_sampling_stops_on_an_end_token_and_keeps_it(engine):
    groups = engine.generate(["Reply with the single word: hello"], SamplingSpec(2, 1.0, 1.0, 24, seed=0))
    for s in groups[0]:
        ends = [i for i, t in enumerate(s.token_ids) if t in (IM_END, ENDOFTEXT)]
        if s.finish_reason == "stop":
            assert ends == [len(s.token_ids) - 1]  # stopped on the first end token, which is kept
        else:
            assert ends == [] and len(s.token_ids) == 24
        assert "<|im_end|>" not in s.text
    assert any(s.finish_reason == "stop" for s in groups[0])


def test_blocked_logprobs_equal_direct_on_the_real_model(engine):
    from spark_core.maths.grpo import token_entropy, token_logprobs
    from spark_core.model.logits import blocked_matches, response_stats, use_blocks

    model, tok = engine.model, engine.tokenizer
    assert use_blocks(model, "auto") and blocked_matches(model)
    (p,) = encode_prompts(tok, ["What is 3+54?"])
    r = tok("3 + 54 = 57. \\boxed{57}", add_special_tokens=False)["input_ids"] + [IM_END]
    ids = torch.tensor([p + r])
    where = (len(p) - 1 + torch.arange(len(r)))[None]
    tokens, mask = torch.tensor([r]), torch.ones((1, len(r)), dtype=torch.bool)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.reshape(-1, model.config.vocab_size)[where]
        lp, ent = response_stats(model, {"input_ids": ids}, where, tokens, mask)
    # float32: the (1, T, H) x (H, V) product and the gathered (n, H) x (H, V) one round differently
    # (logits near 10-30): measured up to 2e-5 apart, so 1e-4 here; the float64 check below is exact.
    assert torch.allclose(lp, token_logprobs(logits, tokens), atol=1e-4)
    assert torch.allclose(ent, token_entropy(logits), atol=1e-4)
    import copy

    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        ref = m64(input_ids=ids).logits.reshape(-1, model.config.vocab_size)[where].log_softmax(-1)  # float64
        lp64, ent64 = response_stats(m64, {"input_ids": ids}, where, tokens, mask)
    del m64
    assert lp64.dtype == torch.float64
    assert torch.allclose(lp64, ref.gather(-1, tokens[..., None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(ent64, -(ref.exp() * ref).sum(-1), atol=1e-5)


def test_verdict_logodds_without_full_vocabulary_logits(engine):
    """The evaluate stage's verdict log-odds (blocked: only the label's positions) equal a full forward."""
    from spark_core.evaluation.evaluate import verdict_logodds

    prompt, response = "Is 3+54=57 correct? Answer in \\boxed{}.", "3+54=57, so \\boxed{Yes}"
    (odds,) = verdict_logodds(engine, [prompt], [response], ["Yes"], ["No"])
    tok, model = engine.tokenizer, engine.model
    prefix = engine.encode([prompt])[0] + tok(response[: response.rfind("{") + 1], add_special_tokens=False)["input_ids"]

    def logp(label):
        cont = tok(label + "}", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([prefix + cont])).logits[0].float().log_softmax(-1)
        return sum(lp[len(prefix) - 1 + i, t].item() for i, t in enumerate(cont))

    assert odds == pytest.approx(logp("Yes") - logp("No"), abs=1e-4)


MICRO = """
seed: 0
problems: {source: synthetic, n_train: 200, n_held_out: 20}
model: {path: %s}
prompts: {solve: concise}
warmup: {enabled: true, problems: 4, judge_prompts: 3, samples: 2, epochs: 1, lr: 3.0e-5, batch_size: 4, check_samples: 1}
rollout: {device: cpu, dtype: float32, batch_prompts: 2, group_size: 2, max_new_tokens: 40, judge_max_new_tokens: 32}
train: {lr: 1.0e-5, mini_batch_size: 4, micro_batch_size: 2, bf16_autocast: true, lora: {rank: 8, alpha: 16}}
spark: {template_set: paper, balance_labels: true}
eval: {problems: 2, samples: 0, judge_problems: 2, judge_samples: 2, tts: false}
"""


@pytest.mark.slow
def test_one_iteration_through_the_flow(prefect_api, qwen_dir, engine, tmp_path):
    """Warm-up and one SPARK iteration of the real model through the Prefect flow at micro scale,
    with LoRA as the real-model configs train (full-weight training is the warm-up's, and the
    tiny model's tests): tables written, the warm-up reloads through the Auto classes and the
    iteration's adapters through peft on it, MLflow logged."""
    from mlflow.tracking import MlflowClient
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flows.spark_flow import spark
    from spark_core.rundir import checkpoint_dir
    from spark_core.data.store import read_manifest, read_table
    from spark_core.tracking import tracking_uri

    engine.close()  # free its 2.5 GB before the stages load their own copies
    config = tmp_path / "micro.yaml"
    config.write_text(MICRO % qwen_dir)
    data = tmp_path / "data"
    out = spark(run="qwen", config=str(config), iterations=1, data_dir=str(data))
    assert out["iterations"] == 1
    run_dir = data / "runs" / "qwen"
    rollouts = read_table(run_dir, "rollouts").to_pylist()
    assert {r["phase"] for r in rollouts} == {"policy", "reward"}
    assert len([r for r in rollouts if r["phase"] == "policy"]) == 4
    assert read_table(run_dir, "updates").num_rows >= 1 and read_table(run_dir, "judge_data").num_rows >= 1
    assert read_table(run_dir, "evals").num_rows > 0
    warm = read_manifest(run_dir, "warmup", 0)
    assert {"solve_boxed_before", "solve_boxed_after"} <= set(warm["metrics"])
    ckpt = checkpoint_dir(run_dir, 0)
    base = Path(json.loads((ckpt / "spark_adapter.json").read_text())["base"])
    assert base == Path(warm["shared"]).resolve()  # the adapters apply to the run's warm-up
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(ckpt))
    assert model.config.vocab_size == 151_936 and AutoTokenizer.from_pretrained(ckpt).chat_template
    assert (ckpt / "adapter_model.safetensors").stat().st_size < 100e6 and not (ckpt / "model.safetensors").exists()
    client = MlflowClient(tracking_uri(data))
    (run,) = client.search_runs([client.get_experiment_by_name("spark").experiment_id])
    for key in ("policy/solve_accuracy", "warmup/solve_boxed_before", "warmup/solve_boxed_after", "eval/policy_boxed"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0], key
