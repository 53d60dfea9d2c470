"""The HF engine prefills each prompt once for its G samples (spark_core/model/rollout.py `_decode`)."""

from pathlib import Path

import pytest
import torch

from spark_core.model.rollout import HFEngine, SamplingSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("max_new", [1, 24])
def test_one_prefill_per_prompt_samples_what_prefilling_every_copy_samples(max_new):
    eng = HFEngine(ROOT / "data" / "tiny-model", device="cpu", dtype="float32")
    prompts = eng.encode(["12+34", "7-3", "Is 5+5=10? Answer yes or no"])  # different lengths: left padding
    g = 4
    rows = [p for p in prompts for _ in range(g)]
    spec = SamplingSpec(g, 5.0, 1.0, max_new, seed=5)  # hot: the copies of a prompt sample apart
    shared = eng._decode(rows, spec, torch.Generator().manual_seed(5), group=g)
    every = eng._decode(rows, spec, torch.Generator().manual_seed(5), group=1)
    assert shared[0] == every[0] and shared[2] == every[2]  # the same tokens, stops
    for a, b in zip(shared[1], every[1]):
        assert a == pytest.approx(b, abs=1e-6)  # and log-probs
    assert any(len({tuple(t) for t in shared[0][i : i + g]}) > 1 for i in range(0, len(rows), g))
    with pytest.raises(ValueError, match="runs of 4 copies"):
        eng._decode(rows[1:] + rows[:1], spec, torch.Generator().manual_seed(5), group=g)
