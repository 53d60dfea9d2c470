"""Checkpoint retention (`checkpoints.keep_last`, `checkpoints.keep_every`) and disk use in the
iteration manifest (issue 20, item 6)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from spark_core.config import SparkConfig, load_config
from spark_core.iteration import run_iteration
from spark_core.rundir import checkpoint_dir, completed_iterations, iteration_hash, retired_checkpoints, warmup_dir
from spark_core.stages.problems import prepare_problems
from spark_core.data.store import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def _names(paths):
    return sorted(p.name for p in paths)


@pytest.mark.parametrize("keep_last, keep_every, kept", [
    (2, 0, ["iteration=4", "iteration=5"]),             # the default: the newest two
    (1, 0, ["iteration=5"]),
    (1, 2, ["iteration=1", "iteration=3", "iteration=5"]),
    (2, 3, ["iteration=2", "iteration=4", "iteration=5"]),
    (10, 0, [f"iteration={i}" for i in range(6)]),
])
def test_which_checkpoints_closing_an_iteration_removes(tmp_path, keep_last, keep_every, kept):
    for i in range(6):
        checkpoint_dir(tmp_path, i).mkdir(parents=True)
    checkpoint_dir(tmp_path, 5, "policy").mkdir()
    checkpoint_dir(tmp_path, 2, "policy").mkdir()  # left behind by a killed earlier close
    warmup_dir(tmp_path).mkdir()
    cfg = SparkConfig.model_validate({"checkpoints": {"keep_last": keep_last, "keep_every": keep_every}})
    doomed = retired_checkpoints(cfg, tmp_path, 5)
    left = [p for p in (tmp_path / "checkpoints").iterdir() if p not in doomed]
    assert _names(left) == sorted(kept + ["warmup"])
    assert {"iteration=5.policy", "iteration=2.policy"} <= set(_names(doomed))


def test_retention_is_validated_and_does_not_change_the_training_hash():
    with pytest.raises(ValidationError, match="keep_last"):
        SparkConfig.model_validate({"checkpoints": {"keep_last": 0}})
    with pytest.raises(ValidationError, match="keep_every"):
        SparkConfig.model_validate({"checkpoints": {"keep_every": -1}})
    a = SparkConfig()
    b = SparkConfig.model_validate({"checkpoints": {"keep_last": 5, "keep_every": 3}})
    assert iteration_hash(a) == iteration_hash(b)  # changing retention never redoes training
    assert a.hash() == SparkConfig.model_validate({"checkpoints": {"keep_last": 2}}).hash()  # old runs keep theirs


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_a_run_keeps_what_the_rule_says_and_reports_its_disk_use(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text((ROOT / "configs" / "tiny.yaml").read_text()
                        + "rollout:\n  batch_prompts: 4\n  group_size: 2\n"
                        + "eval:\n  every: 10\n  problems: 4\n  judge_problems: 2\n"
                        + "checkpoints:\n  keep_last: 1\n  keep_every: 2\n")
    cfg, run = load_config(cfg_path), tmp_path / "run"
    prepare_problems(cfg, run)
    for k in range(4):
        doc = run_iteration(cfg, run, k)
        ckpt = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert ckpt == doc["checkpoints_kept"], k
        assert doc["disk"]["checkpoints_bytes"] == _size(run / "checkpoints"), k
        assert abs(doc["disk"]["run_bytes"] - _size(run)) < 64_000, k  # the manifest itself comes after
        assert doc["disk"]["tables_bytes"] > 0
    assert ckpt == ["iteration=1", "iteration=3"]
    assert read_manifest(run, "iteration", 3)["checkpoints_kept"] == ["iteration=1", "iteration=3"]
    # retention changed on the existing run: no iteration is redone, the next close applies it
    keep_all = load_config(cfg_path).model_copy(update={"checkpoints": cfg.checkpoints.model_copy(
        update={"keep_last": 3, "keep_every": 0})})
    assert completed_iterations(run, keep_all) == 4
    doc = run_iteration(keep_all, run, 4)
    assert doc["checkpoints_kept"] == ["iteration=3", "iteration=4"]  # 1 is outside the last 3 now
