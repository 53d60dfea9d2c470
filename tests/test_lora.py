"""LoRA adapters (`train.lora`, spark_core/model/lora.py): what trains, what is saved, the reference."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from spark_core.model import lora
from spark_core.model.checkpoint import CheckpointError, build_model, build_tokenizer, check_model_dir, load_checkpoint, save_checkpoint
from spark_core.config import LoraConfig, SparkConfig, TinyModelConfig
from spark_core.maths.grpo import token_logprobs
from spark_core.data.store import checkpoint_problem
from spark_core.model.trainer import Sequence_, Trainer, TrainSettings

ARCH = TinyModelConfig(hidden=32, layers=2, heads=2, intermediate=64, max_positions=128)
LORA = LoraConfig(rank=4, alpha=8.0)


@pytest.fixture()
def base_dir(tmp_path) -> Path:
    tok = build_tokenizer()
    path = tmp_path / "base"
    save_checkpoint(build_model(tok, ARCH, seed=0), tok, path)
    return path


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(5, 200, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(5, 200, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
        out.append(Sequence_(p, r, [-5.0] * len(r), float(torch.randn(1, generator=g))))
    return out


def _trained(base_dir, steps=2):
    """A LoRA trainer on the tiny base after `steps` optimizer steps (adapters no longer zero)."""
    torch.manual_seed(0)
    model, tok = load_checkpoint(base_dir)
    peft_model = lora.attach(model, LORA)
    t = Trainer(peft_model, None, TrainSettings(lr=5e-2, mini_batch_size=4, micro_batch_size=2, beta=0.1),
                tok.pad_token_id, torch.device("cpu"))
    rows = t.train_period(_batch(4 * steps), "policy")
    return t, tok, rows


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_a_lora_step_trains_the_adapters_only(base_dir, tmp_path):
    before = {k: v.clone() for k, v in load_checkpoint(base_dir)[0].state_dict().items()}
    t, tok, rows = _trained(base_dir)
    assert len(rows) == 2 and not any(r["skipped"] for r in rows)
    trainable = [n for n, p in t.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(len(g["params"]) for g in t.opt.param_groups) == len(trainable)  # AdamW holds adapters only
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in t.model.state_dict().items() if "lora_" not in k}
    assert base_now.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(base_now[k], v), k  # every base weight as it was
    assert any(p.abs().sum() > 0 for n, p in t.model.named_parameters() if "lora_B" in n)  # the adapters moved

    out = tmp_path / "ckpt"
    lora.save_adapter(t.model, tok, out, base_dir)
    t.save_state(out)
    assert checkpoint_problem(out) is None and check_model_dir(out) == out
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys)  # adapter tensors only, no base weight
    assert not (out / "model.safetensors").exists()
    state = torch.load(out / "trainer_state.pt", weights_only=False)
    assert len(state["optimizer"]["state"]) == len(trainable)

    # Sampling reads base + adapters merged: the same logits as the trained peft model.
    merged, _ = load_checkpoint(out)
    ids = [5, 17, 33, 90, 101, 7]
    t.model.eval()
    assert torch.allclose(_logits(merged, ids), _logits(t.model, ids), atol=1e-5)
    assert not torch.allclose(_logits(merged, ids), _logits(load_checkpoint(base_dir)[0], ids), atol=1e-3)

    # Resuming: the trainable adapters and the optimizer state come back.
    again, _ = lora.load_trainable(out)
    t2 = Trainer(again, None, TrainSettings(lr=5e-2, mini_batch_size=4, micro_batch_size=2, beta=0.1), tok.pad_token_id,
                 torch.device("cpu"))
    t2.load_state(out)
    assert t2.step == 2 and [n for n, p in again.named_parameters() if p.requires_grad] == trainable


def test_reference_logprobs_are_the_base_models(base_dir):
    t, tok, _ = _trained(base_dir)
    base, _ = load_checkpoint(base_dir)
    seqs = _batch(3, seed=5)
    tokens, mask, inputs, where = t._response_batch(seqs)
    ref = t.reference_logprobs(inputs, where, tokens, mask)
    with torch.no_grad():
        flat = base(**inputs).logits.reshape(-1, base.config.vocab_size)[where]  # (B, R, V)
    want = token_logprobs(flat, tokens)
    assert torch.allclose(ref[mask], want[mask], atol=1e-5)
    with torch.no_grad():  # and the adapters are on again afterwards: the policy differs from the base
        policy = t._stats(t.net, inputs, where, tokens, mask)[0]
    assert not torch.allclose(policy[mask], want[mask], atol=1e-3)


def test_an_adapter_checkpoint_names_its_base_and_fails_in_one_line_without_it(base_dir, tmp_path):
    t, tok, _ = _trained(base_dir, steps=1)
    out = tmp_path / "ckpt"
    lora.save_adapter(t.model, tok, out, base_dir)
    assert lora.adapter_base(out) == base_dir.resolve()
    (out / "adapter_model.safetensors").unlink()
    assert "no adapter_model.safetensors" in checkpoint_problem(out)
    moved = tmp_path / "moved"
    base_dir.rename(moved)
    with pytest.raises(CheckpointError, match="no longer a model directory") as e:
        load_checkpoint(out)
    assert "\n" not in str(e.value)


def test_lora_config_is_validated_and_off_by_default():
    assert SparkConfig().train.lora is None
    cfg = SparkConfig.model_validate({"train": {"lora": {"rank": 8}}})
    assert cfg.train.lora.rank == 8 and "q_proj" in cfg.train.lora.target_modules
    assert cfg.hash() != SparkConfig().hash()  # LoRA is a training setting: a new run
    with pytest.raises(ValueError, match="train.lora trains in one process"):
        SparkConfig.model_validate({"train": {"lora": {}, "processes": 2}})
    with pytest.raises(ValueError, match="target_modules"):
        SparkConfig.model_validate({"train": {"lora": {"target_modules": []}}})


def test_a_merged_checkpoint_decodes_like_a_plain_model(base_dir, tmp_path):
    """A merged LoRA checkpoint's prefill computes the head with one matmul, as the base does: with
    peft's frozen weights torch broadcast the head to every row (aten::bmm), 3x slower decoding."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from spark_core.model.rollout import HFEngine, SamplingSpec

    t, tok, _ = _trained(base_dir, steps=1)
    out = tmp_path / "ckpt"
    lora.save_adapter(t.model, tok, out, base_dir)
    seen = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    for path in (base_dir, out):
        engine = HFEngine(path, device="cpu", dtype="float32")
        assert all(p.requires_grad for p in engine.model.parameters()), path  # the same as a plain load
        seen.clear()
        with Ops():
            engine.generate(["12+34", "5+6=?"], SamplingSpec(1, 0.0, 1.0, 3, seed=0, ignore_eos=True))
        assert torch.ops.aten.bmm.default not in seen, path
        # and a model object whose weights are all frozen (a peft model's base) decodes the same way
        engine.model.requires_grad_(False)
        seen.clear()
        with Ops():
            engine.generate(["12+34", "5+6=?"], SamplingSpec(1, 0.0, 1.0, 3, seed=0, ignore_eos=True))
        assert torch.ops.aten.bmm.default not in seen, path


def test_frozen_weights_held_in_bf16_change_nothing_under_bf16_autocast(base_dir):
    """`lora.frozen_as`: under bf16 autocast (which casts every frozen weight to bf16 at each call)
    holding them in bf16 gives the same loss and adapter gradients, bit for bit; the float32
    originals are back afterwards."""
    grads, losses = [], []
    for cast in (False, True):
        torch.manual_seed(0)
        model = lora.attach(load_checkpoint(base_dir)[0], LORA)
        with torch.no_grad():  # adapters away from zero, so their path counts too
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        t = Trainer(model, None, TrainSettings(lr=1e-2, mini_batch_size=4, micro_batch_size=2, beta=0.1),
                    load_checkpoint(base_dir)[1].pad_token_id, torch.device("cpu"))
        with lora.frozen_as(model, torch.bfloat16 if cast else torch.float32) as n_cast:
            assert n_cast == (sum("base_layer" in n for n, _ in model.named_parameters()) if cast else 0)
            if cast:
                assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if "base_layer" in n)
                assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = t._micro_loss(_batch(4))
            loss.backward()
        for n, p in model.named_parameters():
            assert p.dtype == before[n].dtype and torch.equal(p.detach(), before[n]), n
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad]))
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_merge_by_hand_equals_peft_merge_and_unload(base_dir, tmp_path, dtype):
    """`lora.merged` adds (alpha / r) B A itself: bit for bit what peft's merge_and_unload gives;
    an adapter config it does not cover (rsLoRA here) goes through peft."""
    import json

    from peft import PeftModel

    t, tok, _ = _trained(base_dir, steps=2)
    out = tmp_path / "ckpt"
    lora.save_adapter(t.model, tok, out, base_dir)
    mine = lora.merged(out, dtype=dtype)
    theirs = PeftModel.from_pretrained(load_checkpoint(base_dir, dtype=dtype)[0], str(out)).merge_and_unload()
    assert mine.state_dict().keys() == theirs.state_dict().keys()
    for k, v in theirs.state_dict().items():
        assert torch.equal(mine.state_dict()[k], v), k
    assert not torch.equal(mine.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           load_checkpoint(base_dir, dtype=dtype)[0].state_dict()["model.layers.0.self_attn.q_proj.weight"])
    conf = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(conf | {"use_rslora": True}))
    fresh = load_checkpoint(base_dir, dtype=dtype)[0]
    assert not lora._merge_by_hand(fresh, out)
    assert all(torch.equal(v, w) for v, w in zip(fresh.state_dict().values(), load_checkpoint(base_dir, dtype=dtype)[0].state_dict().values()))
    rs = lora.merged(out, dtype=dtype)  # through peft: alpha / sqrt(r), another merge
    assert not torch.equal(rs.state_dict()["model.layers.0.self_attn.q_proj.weight"], mine.state_dict()["model.layers.0.self_attn.q_proj.weight"])
