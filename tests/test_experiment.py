"""The experiment's arms, bookkeeping and report (the full run is a benchmark, not a test)."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from spark_core.config import load_config
from spark_core.experiment import (
    ARMS,
    arm_config,
    arm_iterations,
    eval_every,
    markdown,
    mean_curve,
    run_arm,
    write_results,
)
from spark_core.data.store import read_table

ROOT = Path(__file__).resolve().parents[1]


def test_arm_configs_differ_only_where_they_should():
    base = load_config(ROOT / "configs" / "tiny.yaml")
    cfgs = {arm: arm_config(base, arm, 3, 6) for arm in ARMS}
    assert {a: (c.spark.mode, c.spark.balance_labels) for a, c in cfgs.items()} == {
        "base": ("spark", False), "grpo_policy": ("policy_only", False), "grpo_reward": ("reward_only", True),
        "grpo_static": ("static_mix", True), "spark": ("spark", False), "spark_safeguarded": ("spark", True),
        "spark_weighted": ("spark", True), "spark_expected": ("spark", True)}
    # the judge-reward arms differ from spark_safeguarded in their one option only
    safe = cfgs["spark_safeguarded"].resolved()["spark"]
    assert {k: v for k, v in cfgs["spark_weighted"].resolved()["spark"].items() if safe[k] != v} == {"label_weighting": "inv_sqrt_ema"}
    assert {k: v for k, v in cfgs["spark_expected"].resolved()["spark"].items() if safe[k] != v} == {"judge_reward": "expected"}
    for c in cfgs.values():  # same seed, problems, model, sampling and optimisation in every arm
        assert c.seed == 3 and c.problems == base.problems and c.rollout == base.rollout and c.train == base.train
    assert [arm_iterations(a, 5) for a in ARMS] == [0, 10, 10, 5, 5, 5, 5, 5]
    for n in range(1, 25):
        e = eval_every(n)
        assert n % e == 0 and (2 * n) % e == 0 and e <= max(1, n // 4)


def _row(arm, seed, p, j):
    return {"arm": arm, "seed": seed, "iterations": 2, "optimizer_steps": 4, "policy_accuracy": p, "judge_accuracy": j,
            "judge_auroc": 0.5, "tts_accuracy": p, "reflection_accuracy": 0.1, "verdict_share_yes": 1.0,
            "verdict_share_a_pairwise": 0.5, "optimizer_steps_at_equal_steps": 4, "policy_accuracy_at_equal_steps": p,
            "judge_accuracy_at_equal_steps": j, "judge_auroc_at_equal_steps": 0.5, "tts_accuracy_at_equal_steps": p,
            "reflection_accuracy_at_equal_steps": 0.1, "verdict_share_yes_at_equal_steps": 1.0,
            "verdict_share_a_pairwise_at_equal_steps": 0.5, "seconds": 1.0}


def test_results_table_and_markdown(tmp_path):
    rows = [_row("spark", 0, 0.6, 0.5), _row("spark", 1, 0.8, 0.7), _row("base", 0, 0.5, None)]
    files = write_results(rows, tmp_path, {"iterations": 2})
    t = pq.read_table(files["parquet"])
    assert t.num_rows == 3
    assert {"arm", "seed", "iterations", "optimizer_steps", "policy_accuracy", "judge_accuracy", "judge_auroc",
            "tts_accuracy"} <= set(t.column_names)
    md = markdown(rows, {"iterations": 2})
    assert "| spark | 4 | 70.0 ± 14.1 | 60.0 ± 14.1 | 65.0 ± 14.1 |" in md
    assert "| base | 4 | 50.0 | - | - |" in md
    assert md.index("| base") < md.index("| spark")  # arms in their fixed order


@pytest.mark.parametrize("arm", ["grpo_policy", "grpo_static"])
def test_run_arm_small(tmp_path, arm):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text((ROOT / "configs" / "tiny.yaml").read_text() + "rollout:\n  batch_prompts: 4\n  group_size: 2\n"
                        "eval:\n  problems: 6\n  judge_problems: 6\n  samples: 0\n")
    row, run_dir, cfg = run_arm(load_config(cfg_path), arm, 0, 1, tmp_path / "exp")
    assert row["arm"] == arm and row["iterations"] == 1 and 0 <= row["policy_accuracy"] <= 1
    iterations = sorted(set(read_table(run_dir, "rollouts").column("iteration").to_pylist()))
    assert iterations == list(range(arm_iterations(arm, 1)))
    phases = set(read_table(run_dir, "updates").column("phase").to_pylist())
    assert phases == ({"policy"} if arm == "grpo_policy" else {"reward"})  # static: one mixed period
    assert row["optimizer_steps_at_equal_steps"] >= row["optimizer_steps"] > 0
    again, _, _ = run_arm(load_config(cfg_path), arm, 0, 1, tmp_path / "exp")  # resumable: nothing redone
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in row.items() if k != "seconds"}
    assert row["seconds"] <= again["seconds"] < 2 * row["seconds"]  # the first run's time is kept, not replaced


def test_experiment_flow_writes_results_and_nested_mlflow_runs(prefect_api, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.experiment_flow import experiment
    from spark_core.tracking import tracking_uri

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text((ROOT / "configs" / "tiny.yaml").read_text() + "rollout:\n  batch_prompts: 4\n  group_size: 2\n")
    out = tmp_path / "out"
    rows = experiment(name="t", config=str(cfg_path), preset="quick", iterations=1, arms=["base", "grpo_policy"],
                      out=str(out), data_dir=str(tmp_path / "data"))
    assert [(r["arm"], r["seed"]) for r in rows] == [("base", 0), ("grpo_policy", 0)]
    assert pq.read_table(out / "results.parquet").num_rows == 2
    assert (out / "results.md").is_file() and (out / "coevolution.png").is_file()
    client = MlflowClient(tracking_uri(tmp_path / "data"))
    runs = client.search_runs([client.get_experiment_by_name("spark-experiment").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and {r.info.run_name for r in children} == {"base-seed0", "grpo_policy-seed0"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in children)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    """Every config the README points to validates (a typo in a field name is an error)."""
    cfg = load_config(path)
    assert cfg.seed == 0 and cfg.model.path


def test_coevolution_curve_averages_seeds_per_iteration():
    """Seeds whose reward periods took different step counts still give one point per iteration."""
    points = [(0, 7, 0.5, 0.6), (0, 8, 0.7, 0.4), (1, 15, 0.6, None), (1, 14, 0.8, 0.5), (2, 20, None, None)]
    assert mean_curve(points) == [(7.5, 0.6, 0.5), (14.5, 0.7, 0.5), (20, None, None)]
