"""The CUDA path: the same code as on CPU, checked against CPU where both exist.

Every test here needs a CUDA GPU and skips with that reason elsewhere (CI has none); run them
on a GPU machine with `pytest tests/test_cuda.py`. The pipeline end to end on a GPU is
`benchmarks/gpu_check.py`.
"""

import copy
import math

import pytest
import torch

from spark_core.model.checkpoint import build_model, build_tokenizer, load_checkpoint, save_checkpoint
from spark_core.config import TinyModelConfig
from spark_core.model.rollout import HFEngine, SamplingSpec
from spark_core.model.trainer import Sequence_, Trainer, TrainSettings, packing_matches

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and none is visible")

ARCH = TinyModelConfig(hidden=64, layers=2, heads=2, intermediate=128, max_positions=128)
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("tiny")
    save_checkpoint(build_model(tok, ARCH, seed=0), tok, path)
    return path


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(5, 200, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(5, 200, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
        out.append(Sequence_(p, r, [-5.0] * len(r), float(torch.randn(1, generator=g))))
    return out


def _trainer(tok, device, **kw):
    model = build_model(tok, ARCH, seed=1)
    settings = TrainSettings(lr=1e-3, mini_batch_size=8, micro_batch_size=4, beta=0.01, **kw)
    return Trainer(model, copy.deepcopy(model), settings, tok.pad_token_id, device)


def _flat(model):
    return torch.cat([p.detach().float().cpu().flatten() for p in model.parameters()])


def test_training_on_cuda_matches_cpu(tok):
    """fp32 weights on both: two optimizer steps give the same rows and weights within float noise."""
    rows, weights = {}, {}
    for name, dev in (("cpu", CPU), ("cuda", CUDA)):
        t = _trainer(tok, dev)
        rows[name] = t.train_period(_batch(), "policy")
        weights[name] = _flat(t.model)
    assert len(rows["cuda"]) == 2
    for a, b in zip(rows["cpu"], rows["cuda"]):
        for key in ("loss", "kl", "entropy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key
    assert (weights["cpu"] - weights["cuda"]).abs().max().item() < 1e-4


def test_packing_is_exact_on_cuda(tok):
    """The packed layout (positions restart, no mask) needs the attention kernel to honour them."""
    model = build_model(tok, ARCH, seed=2).to(CUDA)
    assert packing_matches(model, tok.pad_token_id, CUDA)
    rows = {}
    for packing in (False, True):
        t = _trainer(tok, CUDA, packing=packing)
        rows[packing] = t.train_period(_batch(seed=3), "policy")
    for a, b in zip(rows[False], rows[True]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)


def test_optimizer_state_saved_on_cuda_resumes_on_cpu(tok, tmp_path):
    """A run trained on a GPU machine can be continued on a CPU one (and back)."""
    gpu = _trainer(tok, CUDA)
    gpu.train_period(_batch(), "policy")
    save_checkpoint(gpu.model, tok, tmp_path)
    gpu.save_state(tmp_path)
    model, _ = load_checkpoint(tmp_path)
    cpu = Trainer(model, copy.deepcopy(model), gpu.s, tok.pad_token_id, CPU)
    cpu.load_state(tmp_path)
    assert cpu.step == gpu.step == 2
    moments = cpu.opt.state_dict()["state"][0]["exp_avg"]
    assert moments.device.type == "cpu"
    a = cpu.train_period(_batch(seed=5), "policy")
    b = gpu.train_period(_batch(seed=5), "policy")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 3]
    assert a[-1]["loss"] == pytest.approx(b[-1]["loss"], rel=1e-3, abs=1e-5)


def test_cuda_engine_log_probs_equal_a_forward_pass(tok):
    """fp32 on the GPU: the sampler's log-probs are the model's (left padding, KV cache, shrinking batch)."""
    model = build_model(tok, ARCH, seed=0).to(CUDA)
    eng = HFEngine(model, tok, device="cuda")
    groups = eng.generate(["1+1", "a much longer prompt 12+34-5", "9"],
                          SamplingSpec(group_size=4, max_new_tokens=16, temperature=0.7, seed=1))
    worst = 0.0
    for g in groups:
        for s in g:
            ids = torch.tensor([s.prompt_ids + s.token_ids], device=CUDA)
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].float() / 0.7, -1)
            start = len(s.prompt_ids) - 1
            ref = logp[start : start + len(s.token_ids)].gather(-1, torch.tensor(s.token_ids, device=CUDA)[:, None])
            worst = max(worst, (ref.squeeze(-1).cpu() - torch.tensor(s.logprobs)).abs().max().item())
    assert worst < 1e-3


def test_bf16_engine_from_a_checkpoint_is_seeded_and_well_formed(ckpt):
    """The rollout stage's default on a GPU: bfloat16 weights, the same seed gives the same samples."""
    eng = HFEngine(ckpt, device="cuda")  # dtype auto: bfloat16 on CUDA
    assert next(eng.model.parameters()).dtype == torch.bfloat16
    spec = SamplingSpec(group_size=4, max_new_tokens=12, seed=3)
    a = eng.generate(["1+1", "23-4", "7"], spec)
    b = eng.generate(["1+1", "23-4", "7"], spec)
    eng.close()
    ids = lambda r: [[s.token_ids for s in g] for g in r]  # noqa: E731
    assert ids(a) == ids(b)
    for g in a:
        assert len(g) == 4
        for s in g:
            assert len(s.logprobs) == len(s.token_ids) <= 12
            assert all(math.isfinite(lp) and lp <= 0.0 for lp in s.logprobs)
            assert s.finish_reason in ("stop", "length")
