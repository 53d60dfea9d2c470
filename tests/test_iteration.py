"""A whole SPARK iteration on the shipped tiny model: tables, restart, continuation."""

import re
from pathlib import Path

import pyarrow as pa
from typer.testing import CliRunner

from spark_core.model.checkpoint import load_checkpoint
from spark_cli.main import app
from spark_core.config import load_config
from spark_core.iteration import run_iteration
from spark_core.rundir import checkpoint_dir, completed_iterations
from spark_core.data.sql import query
from spark_core.stages.problems import prepare_problems
from spark_core.data.store import manifest_path, read_table

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text((ROOT / "configs" / "tiny.yaml").read_text() + "rollout:\n  batch_prompts: 8\n  group_size: 4\n")
    return load_config(small)


def test_iterations_write_tables_and_continue_exactly(tmp_path):
    cfg = _cfg(tmp_path)
    straight, stepwise = tmp_path / "straight", tmp_path / "stepwise"
    for run in (straight, stepwise):
        prepare_problems(cfg, run)
    run_iteration(cfg, straight, 0)
    run_iteration(cfg, straight, 1)
    run_iteration(cfg, stepwise, 0)
    before = manifest_path(stepwise, "iteration", 0).read_text()
    run_iteration(cfg, stepwise, 0)  # complete: skipped
    assert manifest_path(stepwise, "iteration", 0).read_text() == before
    run_iteration(cfg, stepwise, 1)  # a later flow run continues from the saved checkpoint and trainer state
    assert completed_iterations(stepwise, cfg) == 2
    for table in ("rollouts", "updates", "judge_data"):
        a, b = read_table(straight, table), read_table(stepwise, table)
        drop = [c for c in ("seconds", "run") if c in a.column_names]  # run = the directory name
        assert a.drop(drop).equals(b.drop(drop)), table
    kinds = query(stepwise, "select kind, count(*) as n from judge_data group by kind").to_pylist()
    assert {k["kind"] for k in kinds} <= {"pointwise", "pairwise", "reflection"} and kinds
    phases = query(stepwise, "select distinct phase from rollouts order by 1").column("phase").to_pylist()
    assert phases == ["policy", "reward"]
    model, _ = load_checkpoint(checkpoint_dir(stepwise, 1))
    assert (checkpoint_dir(stepwise, 1) / "trainer_state.pt").is_file()
    assert isinstance(read_table(stepwise, "updates"), pa.Table)


def test_iterate_cli(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text((ROOT / "configs" / "tiny.yaml").read_text() + "rollout:\n  batch_prompts: 4\n  group_size: 2\n")
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["iterate", "-c", str(cfg_path), "--run", str(run), "--iterations", "1"])
    assert r.exit_code == 0, r.output
    assert "iteration 0: solve" in r.output
    # Not a terminal: plain progress lines, on stderr only (stdout is the summary, nothing else).
    assert r.stdout.strip().splitlines() == [r.stdout.strip()] and r.stdout.startswith("iteration 0: solve")
    for line in (r"iteration 0 rollout_policy: started", r"iteration 0 train_policy: done in \d+\.\ds",
                 r"iteration 0 rollout_policy: sampling: 8/8 seq in [\d.]+s, [\d.]+ tok/s",
                 r"iteration 0 rollout_reward: sampling: (\d+)/\1 seq in", r"iteration 0 train_reward: reward update: 1/1 step in",
                 r"iteration 0 evaluate: done in"):
        assert re.search(line, r.stderr), (line, r.stderr)
    r = CliRunner().invoke(app, ["iterate", "-c", str(cfg_path), "--run", str(run), "--iterations", "1"])
    assert "iteration 1: solve" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: /nonexistent/model\n")
    r = CliRunner().invoke(app, ["iterate", "-c", str(bad), "--run", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "no such model directory" in r.output


def test_the_chain_is_defined_once_and_walked_by_both_runners():
    """spark iterate's calls and the flow's steps come from the one CHAIN, in its order."""
    import inspect

    from flows import spark_flow
    from spark_core.config import SparkConfig
    from spark_core.iteration import STEPS, stage_calls
    from spark_core.rundir import CHAIN, STAGES

    assert [name for name, _ in stage_calls(SparkConfig(), Path("unused"), 0)] == list(STAGES)
    assert {step for step, _ in CHAIN} == set(STEPS)
    assert "CHAIN" in inspect.getsource(spark_flow.iterate)
