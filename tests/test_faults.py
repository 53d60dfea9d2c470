"""Disk faults and corrupted files (issue 20, items 3 and 4).

A full disk or a read-only directory is simulated by injecting the OSError the kernel would
raise (this suite runs as root, where chmod does not stop writes, and mounting a small tmpfs
needs privileges CI does not have) into the write the stage is making.
"""

import errno
import hashlib
import logging
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from spark_cli.main import app
from spark_core.data import store
from spark_core.data.store import StoreError, manifest_path, read_table

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("problems", "rollouts", "judge_data", "updates", "evals")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "micro.yaml"
    path.write_text((ROOT / "configs" / "tiny.yaml").read_text()
                    + "rollout:\n  batch_prompts: 4\n  group_size: 2\n"
                    + "eval:\n  problems: 4\n  judge_problems: 2\n  samples: 0\n  tts: false\n")
    return path


def _iterate(config, run, n=1):
    return CliRunner().invoke(app, ["iterate", "-c", str(config), "--run", str(run), "--iterations", str(n)])


def _error_line(r) -> str:
    """The one `error:` line a failed command ends with (stage progress lines may come before it)."""
    text = r.output.strip()
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and text.endswith(errors[0]), text
    return errors[0]


@pytest.fixture(scope="module")
def unbroken(config, tmp_path_factory):
    run = tmp_path_factory.mktemp("unbroken") / "run"
    r = _iterate(config, run)
    assert r.exit_code == 0, r.output
    return run


def _tables(run):
    out = {}
    for t in TABLES:
        table = read_table(run, t)
        out[t] = table.drop([c for c in ("seconds", "run") if c in table.column_names])
    return out


def _same_tables(a, b):
    ta, tb = _tables(a), _tables(b)
    for t in TABLES:
        assert ta[t].equals(tb[t]), t


def _snapshot(run):
    """Every file of the run but the staging area, with its content hash."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(run).rglob("*")) if p.is_file() and ".staging" not in p.parts}


def _fault_on(monkeypatch, target, attr, match, nth, err, run):
    """Make `target.attr` raise OSError(err) on its nth call whose arguments mention `match`,
    recording the run's files as they were just before that write."""
    real, seen = getattr(target, attr), {"calls": 0}

    def faulty(*args, **kwargs):
        where = " ".join(str(a) for a in args)
        seen["calls"] += match in where
        if "before" not in seen and seen["calls"] == nth:
            seen["before"] = _snapshot(run)
            raise OSError(err, os.strerror(err), where)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, faulty)
    return seen


@pytest.mark.parametrize("where, target, attr, match, nth, err", [
    # a full disk while writing the reward rollouts' table part (stage verify_reward; the second
    # write of a rollouts-shaped table, after the policy part)
    ("tables/rollouts/iteration=0/reward.parquet", pq, "write_table", "verdict_advantage", 2, errno.ENOSPC),
    # a full disk while saving the policy checkpoint (stage train_policy)
    ("checkpoints/iteration=0.policy", None, "save_checkpoint", "iteration=0.policy", 1, errno.ENOSPC),
    # a read-only file system when the recycle stage's manifest is put in place
    ("manifests/iteration=0/recycle.json", os, "replace", "recycle.json", 1, errno.EROFS),
])
def test_a_disk_fault_fails_one_line_keeps_the_run_and_a_rerun_completes(
        config, unbroken, tmp_path, monkeypatch, where, target, attr, match, nth, err):
    import spark_core.stages.train as iteration  # where the checkpoint is saved

    run = tmp_path / "run"
    seen = _fault_on(monkeypatch, target or iteration, attr, match, nth, err, run)
    r = _iterate(config, run)
    assert "before" in seen, "the fault was never hit"
    files_before = seen["before"]
    assert r.exit_code == 2, r.output
    line = _error_line(r)
    assert "Traceback" not in r.output, r.output
    assert where in line and os.strerror(err) in line, line
    after = _snapshot(run)
    assert {k: after.get(k) for k in files_before} == files_before  # nothing written before was changed or lost
    assert not [p for p in run.glob("checkpoints/*") if p.name.endswith((".tmp", ".old"))]  # no partial copy
    monkeypatch.undo()  # the fault is cleared
    r = _iterate(config, run)
    assert r.exit_code == 0, r.output
    _same_tables(run, unbroken)


def _half_done(config, tmp_path):
    """A run whose iteration 0 finished every stage but was not closed (as after a kill in `finish`)."""
    run = tmp_path / "run"
    assert _iterate(config, run).exit_code == 0
    manifest_path(run, "iteration", 0).unlink()
    return run


def test_a_truncated_table_part_is_named_and_its_stage_redone(config, unbroken, tmp_path, caplog):
    run = _half_done(config, tmp_path)
    part = run / "tables/rollouts/iteration=0/policy.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(StoreError, match=r"policy\.parquet: not a readable Parquet file .*verify_policy"):
        read_table(run, "rollouts")
    stamp = manifest_path(run, "verify_policy", 0).stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="spark_core.data.store"):
        assert _iterate(config, run).exit_code == 0
    assert any("policy.parquet: not a readable Parquet file" in m and "verify_policy" in m for m in caplog.messages)
    assert manifest_path(run, "verify_policy", 0).stat().st_mtime_ns != stamp  # redone
    _same_tables(run, unbroken)


def test_a_manifest_that_is_not_json_is_named_and_its_stage_redone(config, unbroken, tmp_path, caplog):
    run = _half_done(config, tmp_path)
    bad = manifest_path(run, "recycle", 0)
    bad.write_text('{"stage": "recycle", "config_ha')
    with caplog.at_level(logging.WARNING, logger="spark_core.data.store"):
        assert _iterate(config, run).exit_code == 0
    assert any(str(bad) in m and "not a JSON manifest" in m for m in caplog.messages)
    assert store.read_manifest(run, "recycle", 0)["stage"] == "recycle"
    _same_tables(run, unbroken)


def test_a_checkpoint_missing_its_weights_is_named_and_rewritten(config, unbroken, tmp_path, caplog):
    run = _half_done(config, tmp_path)
    (run / "checkpoints/iteration=0/model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="spark_core.data.store"):
        assert _iterate(config, run).exit_code == 0
    assert any("iteration=0: incomplete checkpoint: no weights" in m and "train_reward" in m for m in caplog.messages)
    assert (run / "checkpoints/iteration=0/model.safetensors").is_file()
    _same_tables(run, unbroken)


def test_a_closed_iterations_damaged_checkpoint_is_a_one_line_error(config, tmp_path):
    run = tmp_path / "run"
    assert _iterate(config, run).exit_code == 0
    (run / "checkpoints/iteration=0/model.safetensors").unlink()
    r = _iterate(config, run)
    assert r.exit_code == 2 and "Traceback" not in r.output
    line = _error_line(r)
    assert "iteration=0: incomplete checkpoint: no weights" in line, line
