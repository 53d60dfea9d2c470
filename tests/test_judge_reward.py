"""Label weighting of judge samples (spark.label_weighting: inv_sqrt_ema), by hand and in a run."""

import math

import pytest
import torch

from spark_core.grpo import grpo_advantage
from spark_core.judge_reward import (group_reward_variance, label_shares, label_weights, update_ema,
                                     weight_advantages)


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
    from spark_core.iteration import claim_run, run_iteration, verify
    from spark_core.stages import prepare_problems
    from spark_core.store import manifest_path, read_manifest, read_table

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
