"""Judge-reward options: label weighting (spark.label_weighting: inv_sqrt_ema) and expected rewards
(spark.judge_reward: expected), by hand and in a run."""

import math

import pytest
import torch

from spark_core.maths.grpo import grpo_advantage
from spark_core.maths.judge_reward import (expected_advantages, flat_share, group_reward_variance, label_shares,
                                     label_weights, update_ema, weight_advantages)


def test_shares_are_per_family():
    assert label_shares(["Yes"] * 3 + ["No"] + ["A", "B", "B", "B"] + ["57"]) == {"Yes": 0.75, "No": 0.25, "A": 0.25, "B": 0.75}
    assert label_shares(["Yes", "Yes"]) == {"Yes": 1.0, "No": 0.0}
    assert label_shares([]) == {}


def test_moving_average_by_hand():
    m = update_ema(None, {"Yes": 0.8, "No": 0.2}, 0.9)
    assert m == {"Yes": 0.8, "No": 0.2}
    m = update_ema(m, {"Yes": 0.5, "No": 0.5, "A": 1.0, "B": 0.0}, 0.9)
    assert m["Yes"] == pytest.approx(0.9 * 0.8 + 0.1 * 0.5) and m["No"] == pytest.approx(0.23)
    assert m["A"] == 1.0 and m["B"] == 0.0  # first sight starts at the share
    assert update_ema(m, {}, 0.9) == m  # a batch without judge rows keeps the state


def test_weights_by_hand():
    w = label_weights({"Yes": 0.8, "No": 0.2})
    assert w["Yes"] == pytest.approx(1 / math.sqrt(0.8) / (math.sqrt(0.8) + math.sqrt(0.2)))  # 0.833
    assert w["Yes"] == pytest.approx(0.8333, abs=1e-4) and w["No"] == pytest.approx(1.6667, abs=1e-4)
    assert 0.8 * w["Yes"] + 0.2 * w["No"] == pytest.approx(1.0)  # share-weighted mean 1
    assert label_weights({"A": 0.5, "B": 0.5}) == {"A": pytest.approx(1.0), "B": pytest.approx(1.0)}
    floored = label_weights({"A": 1.0, "B": 0.0})  # B floored at 0.05
    assert floored["B"] == pytest.approx(1 / math.sqrt(0.05) / (1 + math.sqrt(0.05)))


def test_scaling_a_groups_rewards_cancels_in_grpo_so_advantages_are_weighted():
    """Why the weight multiplies advantages: (w r - mean) / std of one group equals the unweighted."""
    r, g = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long)
    assert torch.allclose(grpo_advantage(r * 1.667, g), grpo_advantage(r, g), atol=1e-5)
    rows = [dict(kind="pointwise", label="No", advantage=0.866), dict(kind="pointwise", label="No", advantage=-0.866),
            dict(kind="pairwise", label="A", advantage=0.5), dict(kind="reflection", label="57", advantage=1.0)]
    m = weight_advantages(rows, {"Yes": 0.833, "No": 1.667, "A": 1.0, "B": 1.0})
    assert [r["advantage"] for r in rows] == pytest.approx([0.866 * 1.667, -0.866 * 1.667, 0.5, 1.0])
    assert m["judge_abs_advantage_before"] == pytest.approx((0.866 * 2 + 0.5) / 3)
    assert m["judge_abs_advantage_after"] == pytest.approx((0.866 * 1.667 * 2 + 0.5) / 3)


def test_group_reward_variance_by_hand():
    rows = [dict(kind="pointwise", reward=x) for x in (1, 0, 1, 1)] + [dict(kind="pairwise", reward=1)] * 2 + \
           [dict(kind="reflection", reward=0), dict(kind="reflection", reward=1)]
    ids = [0, 0, 0, 0, 1, 1, 2, 2]
    assert group_reward_variance(rows, ids) == pytest.approx((0.1875 + 0.0) / 2)  # reflection not counted
    assert group_reward_variance(rows[6:], ids[6:]) is None


def test_label_weighting_in_a_run_is_restart_safe(tmp_path):
    """Two iterations with inv_sqrt_ema: the state is in each verify_reward manifest, iteration 1's
    continues iteration 0's, and redoing iteration 1's verify stage writes the same state and rows."""
    import shutil
    from pathlib import Path

    from spark_core.config import SparkConfig
    from spark_core.iteration import run_iteration
    from spark_core.rundir import claim_run
    from spark_core.stages.verify import verify
    from spark_core.stages.problems import prepare_problems
    from spark_core.data.store import manifest_path, read_manifest, read_table

    root = Path(__file__).resolve().parents[1]
    cfg = SparkConfig.model_validate({
        "model": {"path": str(root / "data" / "tiny-model")}, "rollout": {"batch_prompts": 8, "group_size": 4},
        "train": {"mini_batch_size": 32}, "spark": {"label_weighting": "inv_sqrt_ema", "label_ema_decay": 0.5},
        "eval": {"every": 5, "judge_problems": 0}})
    run = tmp_path / "run"
    claim_run(cfg, run)
    prepare_problems(cfg, run)
    run_iteration(cfg, run, 0)
    run_iteration(cfg, run, 1)
    m0, m1 = read_manifest(run, "verify_reward", 0), read_manifest(run, "verify_reward", 1)
    assert m0["label_ema"] and set(m0["label_ema"]) <= {"Yes", "No", "A", "B"}
    rows1 = [r for r in read_table(run, "rollouts").to_pylist() if r["iteration"] == 1 and r["phase"] == "reward"]
    shares = label_shares(r["label"] for r in rows1 if r["kind"] in ("pointwise", "pairwise"))
    assert m1["label_ema"] == pytest.approx(update_ema(m0["label_ema"], shares, 0.5))
    assert "label_weight_Yes" in m1["metrics"] or "label_weight_A" in m1["metrics"]
    before = read_table(run, "rollouts").to_pylist()
    manifest_path(run, "verify_reward", 1).unlink()  # redo the stage, as after a kill
    verify(cfg, run, 1, "reward")
    assert read_manifest(run, "verify_reward", 1)["label_ema"] == m1["label_ema"]
    assert read_table(run, "rollouts").to_pylist() == before
    shutil.rmtree(run)


# --------------------------------------------------------------------------- expected rewards (A1)

def test_expected_advantages_by_hand():
    """The module docstring's example: p = [0.9, 0.6, 0.8, 0.3], r = [1, 1, 1, 0], one group."""
    trace, verdict = expected_advantages([1, 1, 1, 0], [0.9, 0.6, 0.8, 0.3], [0, 0, 0, 0])
    s = math.sqrt(0.07 + 0.175)
    assert trace == pytest.approx([0.25 / s, -0.05 / s, 0.15 / s, -0.35 / s])
    assert trace == pytest.approx([0.505, -0.101, 0.303, -0.707], abs=1e-3)
    assert verdict == pytest.approx([0.202, 0.808, 0.404, -0.606], abs=1e-3)
    # trace + verdict = the hard advantage with baseline mean(p)
    assert [a + v for a, v in zip(trace, verdict)] == pytest.approx([(r - 0.65) / s for r in (1, 1, 1, 0)])
    dr_trace, dr_verdict = expected_advantages([1, 1, 1, 0], [0.9, 0.6, 0.8, 0.3], [0, 0, 0, 0], "drgrpo")
    assert dr_trace == pytest.approx([0.25, -0.05, 0.15, -0.35]) and dr_verdict == pytest.approx([0.1, 0.4, 0.2, -0.3])


def test_agreeing_verdicts_keep_a_signal_and_a_wrong_verdict_is_never_rewarded():
    """All four sampled verdicts right (hard GRPO: 0 advantage each); expected rewards still rank
    the traces. A wrong verdict after a confident trace gets a negative verdict advantage."""
    hard, p = [1, 1, 1, 1], [0.95, 0.55, 0.7, 0.9]
    assert grpo_advantage(torch.tensor(hard, dtype=torch.float32), torch.zeros(4, dtype=torch.long)).abs().sum() == 0
    trace, verdict = expected_advantages(hard, p, [0] * 4)
    assert trace[0] > 0 > trace[1] and all(v > 0 for v in verdict)
    _, verdict = expected_advantages([0, 1, 1, 1], p, [0] * 4)
    assert verdict[0] < 0  # the wrong verdict after the best trace (p = 0.95)
    # a group whose every p is exactly 0 (no verdict anywhere) or 1: no signal, no division by ~0
    assert expected_advantages([0, 0], [0.0, 0.0], [3, 3]) == ([0.0, 0.0], [0.0, 0.0])
    assert flat_share([1, 1, 0, 1], [0, 0, 1, 1]) == 0.5


def test_per_token_advantages_in_the_loss():
    """(B, T) advantages equal to a constant per row give the (B,) loss; a verdict token's own
    advantage changes only its own term."""
    from spark_core.maths.grpo import policy_loss

    torch.manual_seed(0)
    logp, old = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.ones(2, 5)
    adv = torch.tensor([0.7, -0.3])
    a, _ = policy_loss(logp, old, adv, mask, beta=0)
    b, _ = policy_loss(logp, old, adv[:, None].repeat(1, 5), mask, beta=0)
    assert torch.allclose(a, b)
    per = adv[:, None].repeat(1, 5)
    per[0, 3:] = -2.0
    c, _ = policy_loss(logp, old, per, mask, beta=0)
    ratio = torch.exp(logp[0, 3:] - old[0, 3:])
    pg_old = -torch.minimum(ratio * 0.7, ratio.clamp(0.8, 1.28) * 0.7)
    pg_new = -torch.minimum(ratio * -2.0, ratio.clamp(0.8, 1.28) * -2.0)
    assert float(c - a) == pytest.approx(float((pg_new - pg_old).sum() / 10), abs=1e-6)


class _CharTokenizer:
    """One character per token, plus a merged `{Y`/`{N` token to exercise the lead."""

    def __init__(self):
        self.vocab = [chr(c) for c in range(32, 127)] + ["{Y", "{N", "Yes"]
        self.pad_token_id = 0
        self.name_or_path = "char-test"

    def __len__(self):
        return len(self.vocab)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.vocab[i] for i in ids)

    def batch_decode(self, rows, skip_special_tokens=True):
        return [self.decode(r) for r in rows]

    def encode(self, text):
        return [self.vocab.index(c) for c in text]


def test_verdict_site_and_option_tokens():
    from spark_core.maths.verdict_prob import option_tokens, verdict_site

    tok = _CharTokenizer()
    ids = tok.encode("ok \\boxed{") + [len(tok.vocab) - 1] + tok.encode("}")  # ... \boxed{ + "Yes" + }
    site = verdict_site(tok, ids)
    assert site.index == len(tok.encode("ok \\boxed{")) and site.lead == ""
    merged = tok.encode("ok \\boxed") + [tok.vocab.index("{Y")] + tok.encode("es}")
    site = verdict_site(tok, merged)
    assert site.index == len(tok.encode("ok \\boxed")) and site.lead == "{"
    assert verdict_site(tok, tok.encode("no box")) is None and verdict_site(tok, tok.encode("\\boxed{}")) is None
    yes = option_tokens(tok, "", "Yes")
    assert {tok.vocab[i] for i in yes} == {"Y", "y", "Yes"}
    assert {tok.vocab[i] for i in option_tokens(tok, "{", "No")} == {"{N"}


def test_right_verdict_probability_is_the_teacher_forced_softmax():
    """On the tiny model: P(right) equals softmax(logits / T) at the verdict position summed over
    the option's first tokens, computed directly; a response without a box gives (0, None)."""
    from pathlib import Path

    from spark_core.model.checkpoint import load_checkpoint
    from spark_core.maths.verdict_prob import option_tokens, right_verdict_probability

    model, tok = load_checkpoint(Path(__file__).resolve().parents[1] / "data" / "tiny-model")
    prompt = tok.encode("Is 2+2=4 right?")
    resp_yes = tok.encode("2+2=4. \\boxed{Yes}", add_special_tokens=False)
    resp_none = tok.encode("I do not know", add_special_tokens=False)
    probs, where = right_verdict_probability(model, tok, [prompt, prompt, prompt], [resp_yes, resp_yes, resp_none],
                                             ["Yes", "No", "Yes"], temperature=0.7)
    j = where[0]
    assert where[1] == j and where[2] is None and probs[2] == 0.0
    assert tok.decode(resp_yes[j:]).startswith("Yes")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + resp_yes[:j]])).logits[0, -1]
    p = torch.softmax(logits / 0.7, dim=-1)
    assert probs[0] == pytest.approx(float(p[option_tokens(tok, "", "Yes")].sum()), abs=1e-5)
    assert probs[1] == pytest.approx(float(p[option_tokens(tok, "", "No")].sum()), abs=1e-5)
    assert 0 < probs[0] + probs[1] <= 1 + 1e-6


def test_expected_rewards_in_a_run(tmp_path):
    """One iteration with judge_reward: expected (and label weighting on top): every judge row has
    P(right) in [0, 1] and a verdict index where it boxed a verdict; its advantages are the ones
    recomputed by hand from the table; reflection rows keep the verifier's; the monitors are in
    the manifest; the train stage consumed them (it ran steps); redoing the stage gives the same rows."""
    from pathlib import Path

    from spark_core.config import SparkConfig
    from spark_core.iteration import run_iteration, stage_calls
    from spark_core.rundir import claim_run
    from spark_core.stages.verify import verify
    from spark_core.stages.problems import prepare_problems
    from spark_core.data.store import manifest_path, read_manifest, read_table

    root = Path(__file__).resolve().parents[1]
    cfg = SparkConfig.model_validate({
        "model": {"path": str(root / "data" / "tiny-model")}, "rollout": {"batch_prompts": 8, "group_size": 4},
        "train": {"mini_batch_size": 32}, "spark": {"judge_reward": "expected"},
        "eval": {"every": 5, "judge_problems": 0}})
    run = tmp_path / "run"
    claim_run(cfg, run)
    prepare_problems(cfg, run)
    for name, call in stage_calls(cfg, run, 0):
        call()
        if name == "verify_reward":  # redo it, as after a kill before its manifest: the same rows
            before = read_table(run, "rollouts").to_pylist()
            manifest_path(run, "verify_reward", 0).unlink()
            verify(cfg, run, 0, "reward")
            assert read_table(run, "rollouts").to_pylist() == before
    run_iteration(cfg, run, 0)
    rows = [r for r in read_table(run, "rollouts").to_pylist() if r["phase"] == "reward"]
    judged = [r for r in rows if r["kind"] in ("pointwise", "pairwise")]
    assert judged
    for r in judged:
        assert 0 <= r["expected_reward"] <= 1
        assert (r["verdict_index"] is None) == (r["verdict_advantage"] is None)
        if r["verdict_index"] is None:
            assert r["expected_reward"] == 0.0 and r["reward"] == 0.0
    assert any(r["verdict_index"] is not None for r in judged)
    gid = {}
    ids = [gid.setdefault(r["prompt_id"], len(gid)) for r in judged]
    trace, verdict = expected_advantages([r["reward"] for r in judged], [r["expected_reward"] for r in judged], ids)
    assert [r["advantage"] for r in judged] == pytest.approx(trace)
    assert [r["verdict_advantage"] for r in judged if r["verdict_index"] is not None] == pytest.approx(
        [v for v, r in zip(verdict, judged) if r["verdict_index"] is not None])
    assert all(r["expected_reward"] is None for r in rows if r["kind"] == "reflection")
    m = read_manifest(run, "verify_reward", 0)["metrics"]
    # (not ordered: traces that are identical up to the verdict give equal p whatever was sampled)
    assert 0 <= m["judge_flat_groups_expected"] <= 1 and 0 <= m["judge_flat_groups_hard"] <= 1
    assert "judge_expected_reward_mean" in m and "judge_group_expected_variance" in m
    assert read_manifest(run, "train_reward", 0)["metrics"]["steps"] > 0
