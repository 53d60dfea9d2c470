"""The Prefect flow `spark`: stages as tasks, continuation, SIGKILL inside every stage, the run lock, MLflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_core.model.checkpoint import load_checkpoint
from spark_core.config import load_config
from spark_core.rundir import STAGES, checkpoint_dir, completed_iterations
from spark_core.runlock import RunLocked, run_lock
from spark_core.data.store import read_table

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("rollout:\n  batch_prompts: 4\n  group_size: 4\neval:\n  problems: 8\n  judge_problems: 4\n  samples: 2\n"
         # the format warm-up too, so the SIGKILL test kills inside it as well
         "warmup:\n  enabled: true\n  problems: 6\n  judge_prompts: 4\n  samples: 2\n  epochs: 1\n")


@pytest.fixture
def small_config(tmp_path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text((ROOT / "configs" / "tiny.yaml").read_text() + SMALL)
    return path


def _tables(run_dir: Path) -> dict:
    out = {}
    for table in ("problems", "rollouts", "updates", "judge_data", "evals"):
        t = read_table(run_dir, table)
        out[table] = t.drop([c for c in ("seconds", "run") if c in t.column_names])
    return out


def _mlflow_history(data_dir: Path, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    from spark_core.tracking import tracking_uri

    client = MlflowClient(tracking_uri(data_dir))
    (run,) = client.search_runs([client.get_experiment_by_name("spark").experiment_id])
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_flow_runs_iterations_and_tracks_them(prefect_api, small_config, tmp_path):
    from flows.spark_flow import spark

    data = tmp_path / "data"
    out = spark(run="r", config=str(small_config), iterations=1, data_dir=str(data))
    assert out["iterations"] == 1
    out = spark(run="r", config=str(small_config), data_dir=str(data))  # the config's `iterations` (1): continues
    assert out["iterations"] == 2
    run_dir = data / "runs" / "r"
    assert completed_iterations(run_dir, load_config(small_config)) == 2
    load_checkpoint(checkpoint_dir(run_dir, 1))
    assert not checkpoint_dir(run_dir, 0, "policy").exists() and not checkpoint_dir(run_dir, 1, "policy").exists()
    # MLflow: one run for the SPARK run, each metric once per iteration, config as params.
    for key in ("policy/solve_accuracy", "reward/reward_mean", "policy/train_kl", "reward/train_entropy",
                "policy/response_tokens_mean", "policy/train_grad_norm", "policy/train_clip_frac_high",
                "reward/zero_variance_groups", "recycle/made_pointwise", "recycle/consumed_pairwise",
                "seconds/train_policy", "eval/policy_accuracy", "eval/judge_accuracy", "eval/mean_at_2"):
        assert [s for s, _ in _mlflow_history(data, key)] == [0, 1], key
    rows = read_table(run_dir, "rollouts").to_pylist()
    for kind in ("pointwise", "pairwise", "reflection"):
        # logged exactly for the iterations whose reward batch had that kind (4 prompts x 4 samples
        # need not make every kind, which one is missing depends on the draw)
        had = sorted({r["iteration"] for r in rows if r["phase"] == "reward" and r["kind"] == kind})
        assert [s for s, _ in _mlflow_history(data, f"reward/{kind}_accuracy")] == had, kind
    assert any(r["phase"] == "reward" for r in rows)
    from mlflow.tracking import MlflowClient

    from spark_core.tracking import tracking_uri

    client = MlflowClient(tracking_uri(data))
    run = client.get_run(json.loads((run_dir / "mlflow.json").read_text())["run_id"])
    assert run.data.params["rollout.batch_prompts"] == "4"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["coevolution.png"]
    # a different config on the same run directory is refused, the tables untouched
    other = tmp_path / "other.yaml"
    other.write_text(small_config.read_text() + "train:\n  lr: 0.001\n")
    before = _tables(run_dir)
    with pytest.raises(ValueError, match="made with another config"):
        spark(run="r", config=str(other), data_dir=str(data))
    assert all(before[t].equals(after) for t, after in _tables(run_dir).items())


def test_second_run_on_a_locked_run_refuses(prefect_api, small_config, tmp_path):
    from flows.spark_flow import spark

    data = tmp_path / "data"
    run_dir = data / "runs" / "busy"
    with run_lock(run_dir):
        with pytest.raises(RunLocked, match=r"in use by pid .*\(waited 1s\)"):
            spark(run="busy", config=str(small_config), data_dir=str(data), lock_wait_s=1)
    assert not (run_dir / "tables").exists()  # refused before writing anything
    # the lock goes with its holder: once released, a run proceeds
    assert spark(run="busy", config=str(small_config), data_dir=str(data))["iterations"] == 1


def test_a_locked_run_is_waited_for(tmp_path):
    import threading
    import time

    run_dir = tmp_path / "run"
    held = threading.Event()

    def hold():
        with run_lock(run_dir):
            held.set()
            time.sleep(1.5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    with pytest.raises(RunLocked):
        with run_lock(run_dir, wait_s=0.2):
            pass
    with run_lock(run_dir, wait_s=60):  # taken once the holder lets go
        assert not t.is_alive()
    t.join()


def _flow_process(config: Path, run_dir: Path, data: Path, api: str, fault: str | None) -> subprocess.CompletedProcess:
    # The same torch thread count as the in-process reference run: float reductions (and so the
    # `updates` table) are bit-identical only with the same threading. The killed run makes its
    # own shared warm-up (beside its data), so the kill inside the warmup stage hits a real one.
    import torch

    env = os.environ | {"PREFECT_API_URL": api, "OMP_NUM_THREADS": str(torch.get_num_threads()),
                        "SPARK_WARMUP_DIR": str(data / "warmups")}
    env.pop("SPARK_FAULT_STAGE", None)
    if fault:
        env["SPARK_FAULT_STAGE"] = fault
    cmd = [sys.executable, "-m", "flows.spark_flow", "--run", str(run_dir), "--config", str(config),
           "--iterations", "1", "--data-dir", str(data)]
    # cwd outside the repository: the repository's prefect.toml must not point this at port 4200
    return subprocess.run(cmd, env=env, cwd=run_dir.parent, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("weights", ["full", "lora"])
def test_sigkill_inside_each_stage_then_rerun(prefect_api, small_config, tmp_path, monkeypatch, weights):
    """Kill the flow process inside every stage of iteration 0 in turn (after the stage wrote
    its outputs, before its manifest), re-running each time; the last kill comes after the
    iteration closed, so the final re-run (one iteration) makes iteration 1. The result
    equals an uninterrupted two-iteration run; with full fine-tuning and with LoRA adapters."""
    from flows.spark_flow import spark

    if weights == "lora":
        small_config.write_text(small_config.read_text().replace("train:\n", "train:\n  lora: {rank: 4}\n", 1))
        assert load_config(small_config).train.lora is not None
    monkeypatch.setenv("SPARK_WARMUP_DIR", str(tmp_path / "straight-warmups"))
    straight_data = tmp_path / "straight"
    spark(run="s", config=str(small_config), iterations=2, data_dir=str(straight_data))
    data = tmp_path / "killed"
    run_dir = data / "runs" / "k"
    run_dir.mkdir(parents=True)
    for stage in (*STAGES, "finish"):
        r = _flow_process(small_config, run_dir, data, prefect_api, stage)
        assert r.returncode == -9, f"{stage}: expected SIGKILL, got {r.returncode}\n{r.stderr[-3000:]}"
    r = _flow_process(small_config, run_dir, data, prefect_api, None)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = load_config(small_config)
    assert completed_iterations(run_dir, cfg) == 2
    expected, got = _tables(straight_data / "runs" / "s"), _tables(run_dir)
    for table in expected:
        assert expected[table].num_rows > 0, table
        assert expected[table].equals(got[table]), table
    for k in (0, 1):
        load_checkpoint(checkpoint_dir(run_dir, k))
        assert (checkpoint_dir(run_dir, k) / "adapter_model.safetensors").is_file() == (weights == "lora")
    assert not any(p.name.endswith((".policy", ".tmp")) for p in (run_dir / "checkpoints").iterdir())
    assert not (run_dir / ".staging").exists() or not any((run_dir / ".staging").iterdir())
    assert [s for s, _ in _mlflow_history(data, "iteration")] == [0, 1]  # each iteration logged once
