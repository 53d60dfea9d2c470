"""spark_core.maths.grpo against numbers worked out by hand, and the vectorized advantage against a loop.

CPU only, no model: every tensor here is a few numbers.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_core.maths.grpo import (
    ADVANTAGES,
    AGG_MODES,
    POLICY_LOSSES,
    advantage_fn,
    agg_loss,
    drgrpo_advantage,
    grpo_advantage,
    group_metrics,
    k3_kl,
    policy_loss,
    policy_loss_fn,
    token_entropy,
    token_logprobs,
)

T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0)


# ---------------------------------------------------------------- advantages


def slow_advantage(rewards, group_ids, std_scale, eps=1e-6):
    """The obvious loop: one group at a time, statistics.stdev (n - 1)."""
    import statistics

    r, g = rewards.tolist(), group_ids.tolist()
    out = [0.0] * len(r)
    for gid in set(g):
        idx = [i for i, x in enumerate(g) if x == gid]
        vals = [r[i] for i in idx]
        if len(vals) == 1 or max(vals) == min(vals):
            continue  # singleton or all equal: advantage 0
        mean = sum(vals) / len(vals)
        std = statistics.stdev(vals)
        for i in idx:
            out[i] = (r[i] - mean) / (std + eps) if std_scale else r[i] - mean
    return T(out, dtype=torch.float64)


def test_grpo_uses_unbiased_std():
    # mean 0.5; deviations +-0.5; sum of squares 4 * 0.25 = 1.
    # n-1 std = sqrt(1/3) = 0.57735 -> 0.5 / 0.57735 = 0.86603 (numpy's n std: sqrt(1/4) -> 1.0)
    adv = grpo_advantage(T([1.0, 0.0, 0.0, 1.0]), T([0, 0, 0, 0]))
    assert close(adv, [0.866025, -0.866025, -0.866025, 0.866025])
    assert not close(adv.abs(), [1.0] * 4, tol=0.1)


def test_drgrpo_is_centered_only():
    # mean 0.5 -> r - 0.5, no division
    assert close(drgrpo_advantage(T([1.0, 0.0, 0.0, 1.0]), T([0, 0, 0, 0])), [0.5, -0.5, -0.5, 0.5])


def test_two_interleaved_groups_of_unequal_size():
    # group 7 = positions 0, 2 with rewards [1, 0]: mean 0.5, n-1 var (0.25 + 0.25) / 1 = 0.5,
    #   std 0.707107 -> +-0.5 / 0.707107 = +-0.707107
    # group 3 = positions 1, 3, 4 with rewards [0, 1, 1]: mean 2/3, deviations -2/3, 1/3, 1/3,
    #   sum sq 4/9 + 1/9 + 1/9 = 2/3, n-1 var 1/3, std 0.577350
    #   -> -0.666667 / 0.577350 = -1.154701 and 0.333333 / 0.577350 = 0.577350
    r, g = T([1.0, 0.0, 0.0, 1.0, 1.0]), T([7, 3, 7, 3, 3])
    assert close(grpo_advantage(r, g), [0.707107, -1.154701, -0.707107, 0.577350, 0.577350])
    assert close(drgrpo_advantage(r, g), [0.5, -2 / 3, -0.5, 1 / 3, 1 / 3])


@pytest.mark.parametrize("name", ["grpo", "drgrpo"])
def test_all_equal_and_singleton_groups_get_zero(name):
    fn = advantage_fn(name)
    # group 0 all right, group 1 all wrong, group 2 one rollout, group 3 three 0.1s (float mean
    # of three 0.1s is 0.10000000000000002: must still be exactly 0), group 4 informative.
    r = T([1.0, 1.0, 0.0, 0.0, 1.0, 0.1, 0.1, 0.1, 1.0, 0.0], dtype=torch.float64)
    g = T([0, 0, 1, 1, 2, 3, 3, 3, 4, 4])
    adv = fn(r, g)
    assert not adv.isnan().any()
    assert torch.equal(adv[:8], torch.zeros(8, dtype=torch.float64))
    assert (adv[8] > 0) and (adv[9] < 0)


def test_group_metrics_counts_groups_without_signal():
    # groups: 0 all right, 1 mixed, 2 singleton -> 2 of 3 carry no signal; reward mean 4 / 6
    m = group_metrics(T([1.0, 1.0, 0.0, 1.0, 1.0, 0.0]), T([0, 0, 1, 1, 2, 1]))
    assert m == pytest.approx({"groups": 3.0, "groups_all_equal": 2.0, "frac_all_equal": 2 / 3,
                               "reward_mean": 4 / 6})


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name,std_scale", [("grpo", True), ("drgrpo", False)])
def test_vectorized_matches_loop(seed, name, std_scale):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 60, (1,), generator=gen))
    g = torch.randint(0, max(1, n // 3), (n,), generator=gen) * 5 - 4  # sparse, negative ids too
    if seed % 2:
        r = torch.randint(0, 2, (n,), generator=gen).double()  # 0/1 rewards: many flat groups
    else:
        r = torch.randn(n, generator=gen, dtype=torch.float64)
    assert close(advantage_fn(name)(r, g), slow_advantage(r, g, std_scale), tol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1)), min_size=1, max_size=20), st.randoms())
def test_advantage_is_permutation_equivariant_and_centered(rows, rnd):
    g, r = T([a for a, _ in rows]), T([float(b) for _, b in rows], dtype=torch.float64)
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    perm = T(perm)
    adv = grpo_advantage(r, g)
    assert close(grpo_advantage(r[perm], g[perm]), adv[perm], tol=1e-9)
    for gid in g.unique():  # each group's advantages sum to 0
        assert abs(float(adv[g == gid].sum())) < 1e-9


def test_unknown_advantage_lists_names():
    with pytest.raises(KeyError, match="drgrpo.*grpo"):
        advantage_fn("ppo")
    assert set(ADVANTAGES) == {"grpo", "drgrpo"}


def test_advantage_shape_mismatch_rejected():
    with pytest.raises(ValueError, match=r"\(N,\)"):
        grpo_advantage(T([1.0, 0.0]), T([0, 0, 0]))


# ---------------------------------------------------------------- agg_loss

VALUES = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = T([[1, 1, 0], [1, 0, 0]])


def test_agg_token_mean_by_hand():
    # unmasked 1, 2, 4 -> 7 / 3
    assert close(agg_loss(VALUES, MASK, "token-mean"), 7 / 3)


def test_agg_seq_mean_token_mean_by_hand():
    # row 0: (1 + 2) / 2 = 1.5; row 1: 4 / 1 = 4; mean (1.5 + 4) / 2 = 2.75
    assert close(agg_loss(VALUES, MASK, "seq-mean-token-mean"), 2.75)


def test_agg_empty_row_and_garbage_padding_do_not_leak():
    v = T([[1.0, 2.0, float("inf")], [float("nan"), float("inf"), -float("inf")]])
    m = T([[True, True, False], [False, False, False]])
    # token-mean: (1 + 2) / 2; seq-mean: only row 0 has tokens -> 1.5 (not (1.5 + 0) / 2)
    assert close(agg_loss(v, m, "token-mean"), 1.5)
    assert close(agg_loss(v, m, "seq-mean-token-mean"), 1.5)
    for mode in AGG_MODES:  # nothing unmasked at all -> 0, not NaN
        assert float(agg_loss(v, torch.zeros_like(m), mode)) == 0.0


def test_agg_unknown_mode_lists_modes():
    with pytest.raises(ValueError, match="token-mean.*seq-mean-token-mean"):
        agg_loss(VALUES, MASK, "seq-sum")


# ---------------------------------------------------------------- clipped surrogate


def clip_batch():
    """Row 0, A = +1: ratios 1.1 (inside), 1.5 (> 1 + 0.28: clipped); row 1, A = -2: ratios 0.9
    (inside), 0.5 (< 1 - 0.2: clipped). Column 2 is padding, masked; its log-ratio of 100 would
    overflow exp() in float32 and turn the gradient into NaN without the clamp."""
    ratio = T([[1.1, 1.5, 1.0], [0.9, 0.5, 1.0]])
    old = T([[-1.0, -2.0, -3.0], [-0.5, -1.5, -110.0]])
    logp = (old + ratio.log()).clone()
    logp[1, 2] = -10.0  # padding: logp - old = 100
    mask = T([[1, 1, 0], [1, 1, 0]])
    return logp.requires_grad_(), old, T([1.0, -2.0]), mask


def test_clipped_loss_and_gradient_by_hand():
    logp, old, adv, mask = clip_batch()
    loss, metrics = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # pg = -min(r A, clip(r, 0.8, 1.28) A):
    #   (0,0) -min(1.1, 1.1)   = -1.1     (0,1) -min(1.5, 1.28) = -1.28
    #   (1,0) -min(-1.8, -1.8) =  1.8     (1,1) -min(-1.0, -1.6) =  1.6
    # token-mean over 4 tokens: (-1.1 - 1.28 + 1.8 + 1.6) / 4 = 1.02 / 4 = 0.255
    assert close(loss, 0.255)
    assert metrics["loss"] == pytest.approx(0.255, abs=1e-6)
    assert metrics["policy_loss"] == pytest.approx(0.255, abs=1e-6)
    assert metrics["kl"] == 0.0 and "entropy" not in metrics
    loss.backward()
    # unclipped: d/dlogp = -A * r / n: (0,0) -1 * 1.1 / 4 = -0.275; (1,0) 2 * 0.9 / 4 = 0.45
    # clipped tokens and padding: 0
    assert close(logp.grad, [[-0.275, 0.0, 0.0], [0.45, 0.0, 0.0]])


def test_clip_does_not_help_the_wrong_side():
    # The pessimistic min only clips where it would reward moving further: ratio 1.5 with A = -1
    # and ratio 0.5 with A = +1 stay unclipped.
    #   pg: -min(-1.5, -1.28) = 1.5 and -min(0.5, 0.8) = -0.5 -> mean (1.5 - 0.5) / 2 = 0.5
    #   grad -A r / n: 1 * 1.5 / 2 = 0.75 and -1 * 0.5 / 2 = -0.25
    logp = T([[math.log(1.5)], [math.log(0.5)]], requires_grad=True)
    loss, m = policy_loss(logp, torch.zeros(2, 1), T([-1.0, 1.0]), torch.ones(2, 1))
    assert close(loss, 0.5)
    loss.backward()
    assert close(logp.grad, [[0.75], [-0.25]])
    assert m["clip_frac_low"] == 0.0 and m["clip_frac_high"] == 0.0


def test_clip_fractions_and_ratio_mean():
    # one token per row: A = [+1, -1, -1, +1, +1, +1], ratio [1.5, 1.5, 0.5, 0.5, 1.0, 3.0]
    # high clip active: row 0 only (A > 0, 1.5 > 1.28); row 5 would be but is masked -> 1/5
    # low clip active: row 2 only (A < 0, 0.5 < 0.8) -> 1/5
    # ratio mean over the 5 unmasked: (1.5 + 1.5 + 0.5 + 0.5 + 1.0) / 5 = 1.0
    ratio = T([[1.5], [1.5], [0.5], [0.5], [1.0], [3.0]])
    mask = T([[1], [1], [1], [1], [1], [0]])
    _, m = policy_loss(ratio.log(), torch.zeros(6, 1), T([1.0, -1, -1, 1, 1, 1]), mask)
    assert m["clip_frac_high"] == pytest.approx(0.2)
    assert m["clip_frac_low"] == pytest.approx(0.2)
    assert m["ratio_mean"] == pytest.approx(1.0)


def test_seq_mean_token_mean_through_policy_loss():
    # ratio 1 everywhere so pg = -A: row 0 A = 1 over 2 tokens, row 1 A = 3 over 1 token.
    # token-mean: (-1 - 1 - 3) / 3 = -5/3; seq-mean-token-mean: (-1 + -3) / 2 = -2
    logp, mask = torch.zeros(2, 2), T([[1, 1], [1, 0]])
    assert close(policy_loss(logp, logp, T([1.0, 3.0]), mask)[0], -5 / 3)
    assert close(policy_loss(logp, logp, T([1.0, 3.0]), mask, agg="seq-mean-token-mean")[0], -2.0)


def test_policy_loss_registry_and_shape_check():
    assert policy_loss_fn("clipped") is policy_loss
    with pytest.raises(KeyError, match="clipped"):
        policy_loss_fn("gspo")
    assert set(POLICY_LOSSES) == {"clipped"}
    with pytest.raises(ValueError, match=r"advantages \(B,\) or \(B, T\)"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"advantages \(B,\) or \(B, T\)"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))  # per-token: accepted


# ---------------------------------------------------------------- k3 KL


def test_k3_by_hand():
    # ref - logp = 0.1: e^0.1 - 0.1 - 1 = 1.1051709 - 1.1 = 0.0051709
    # ref - logp = -0.5: e^-0.5 + 0.5 - 1 = 0.6065307 - 0.5 = 0.1065307
    # ref == logp: 1 - 0 - 1 = 0
    kl = k3_kl(T([[-1.0, -2.0, -3.0]]), T([[-0.9, -2.5, -3.0]]))
    assert close(kl, [[0.005170918, 0.106530660, 0.0]], tol=1e-6)


def test_k3_in_loss_scaled_by_beta_with_gradient_sign():
    # advantages 0 and logp == old -> pg = 0, so the loss is beta * mean k3 alone.
    # tokens: ref - logp = [0.1, 0.0] -> k3 [0.0051709, 0]; mean 0.0025855; beta 0.5 -> 0.0012927
    logp = T([[-1.0, -2.0]], requires_grad=True)
    ref, mask = T([[-0.9, -2.0]]), torch.ones(1, 2)
    loss, m = policy_loss(logp, logp.detach(), T([0.0]), mask, ref_logprobs=ref, beta=0.5)
    assert close(loss, 0.5 * 0.0051709 / 2, tol=1e-7)
    assert m["kl"] == pytest.approx(0.0051709 / 2, abs=1e-7)
    loss.backward()
    # d k3 / d logp = 1 - e^(ref - logp): 1 - 1.1051709 = -0.1051709; * beta 0.5 / n 2 = -0.0262927.
    # Negative: descent raises logp toward the reference, which sits above it.
    assert close(logp.grad, [[-0.0262927, 0.0]], tol=1e-6)


def test_k3_off_when_no_reference_or_beta_zero():
    logp, old = T([[-1.0, -2.0]]), T([[-1.2, -1.9]])
    ref, adv, mask = T([[-0.5, -3.0]]), T([1.5]), torch.ones(1, 2)
    base, m0 = policy_loss(logp, old, adv, mask)
    off, m1 = policy_loss(logp, old, adv, mask, ref_logprobs=ref, beta=0.0)
    on, m2 = policy_loss(logp, old, adv, mask, ref_logprobs=ref, beta=0.1)
    assert m0["kl"] == 0.0 and m1["kl"] == 0.0 and m2["kl"] > 0
    assert close(off, base, tol=0)
    assert close(on, base + 0.1 * m2["kl"], tol=1e-6)
    same, m3 = policy_loss(logp, old, adv, mask, ref_logprobs=logp, beta=0.1)
    assert m3["kl"] == 0.0 and close(same, base, tol=0)


# ---------------------------------------------------------------- entropy


def test_entropy_bonus_lowers_loss_by_coef_times_entropy():
    logp, old, adv = T([[-1.0, -2.0, -9.0]]), T([[-1.1, -2.0, -9.0]]), T([1.0])
    mask, ent = T([[1, 1, 0]]), T([[1.0, 2.0, 100.0]])
    base, _ = policy_loss(logp, old, adv, mask)
    with_bonus, m = policy_loss(logp, old, adv, mask, entropy=ent, entropy_coef=0.1)
    # entropy token-mean (1 + 2) / 2 = 1.5 (the masked 100 ignored) -> loss lower by 0.1 * 1.5
    assert m["entropy"] == pytest.approx(1.5)
    assert close(base - with_bonus, 0.15)
    no_coef, m0 = policy_loss(logp, old, adv, mask, entropy=ent)  # coef 0: logged, not added
    assert close(no_coef, base, tol=0) and m0["entropy"] == pytest.approx(1.5)


def test_token_entropy_by_hand():
    # uniform over 4: ln 4 = 1.386294; p = [1/4, 3/4] from logits [0, ln 3]:
    #   -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335
    logits = T([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3), -math.inf, -math.inf]]])
    assert close(token_entropy(logits), [[1.386294, 0.562335]])
    # temperature 2 flattens [0, ln 3] to [0, ln 3 / 2]: p = [1, sqrt 3] / (1 + sqrt 3) = [0.366, 0.634]
    p = T([1.0, math.sqrt(3)]) / (1 + math.sqrt(3))
    assert close(token_entropy(logits[:, 1:], temperature=2.0), [[float(-(p * p.log()).sum())]])


# ---------------------------------------------------------------- token_logprobs


def test_token_logprobs_by_hand_and_temperature():
    # logits [1, 2, 3], token 2: 3 - ln(e + e^2 + e^3) = 3 - ln 30.192880 = 3 - 3.407606 = -0.407606
    # temperature 2: [0.5, 1, 1.5], token 2: 1.5 - ln(1.648721 + 2.718282 + 4.481689)
    #   = 1.5 - ln 8.848692 = 1.5 - 2.180270 = -0.680270
    logits, tok = T([[[1.0, 2.0, 3.0]]]), T([[2]])
    assert close(token_logprobs(logits, tok), [[-0.407606]])
    assert close(token_logprobs(logits, tok, temperature=2.0), [[-0.680270]])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, tok, temperature=0.0)


def test_token_logprobs_matches_log_softmax_gather_in_float32():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=gen) * 4).to(torch.bfloat16)
    tok = torch.randint(0, 11, (3, 5), generator=gen)
    out = token_logprobs(logits, tok, temperature=0.7)
    assert out.dtype == torch.float32 and out.shape == (3, 5)
    ref = torch.log_softmax(logits.float() / 0.7, dim=-1)
    for b in range(3):
        for t in range(5):
            assert abs(float(out[b, t]) - float(ref[b, t, tok[b, t]])) < 1e-5
    # gradient flows to the logits (the policy is trained through this)
    x = torch.randn(1, 2, 4, generator=gen, requires_grad=True)
    token_logprobs(x, T([[0, 3]])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_token_entropy_gradient_finite_with_minus_inf_logits():
    x = T([[[0.5, -math.inf, 1.0]]], requires_grad=True)
    token_entropy(x).sum().backward()
    assert torch.isfinite(x.grad).all()
