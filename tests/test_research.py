"""The research probes in research/ stay runnable: each imports cleanly (no work at import time)
and its command line parses `--help`."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBES = sorted((ROOT / "research").glob("*.py"))


def test_there_are_probes_and_no_benchmark_is_a_probe():
    assert len(PROBES) >= 10
    bench = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert bench <= {"bench_compile.py", "bench_memory.py", "bench_pipeline.py", "bench_real.py", "bench_scale.py",
                     "bench_rollout.py", "bench_trl.py", "bench_verify.py", "bench_vllm.py",
                     "gpu_check.py"}, bench


@pytest.mark.parametrize("path", PROBES, ids=lambda p: p.name)
def test_probe_imports_without_running(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.setattr(sys, "argv", [str(path)])
    spec = importlib.util.spec_from_file_location(f"research_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


@pytest.mark.parametrize("path", [p for p in PROBES if "argparse" in p.read_text()], ids=lambda p: p.name)
def test_probe_help_parses(path):
    r = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower()


def _load(name):
    spec = importlib.util.spec_from_file_location(f"research_{name}", ROOT / "research" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_experiment_joins_and_checks_pieces(tmp_path, monkeypatch):
    """The model sent in pieces is joined in order and checked against the registry's size and hash;
    a missing piece is named as such and leaves no file behind."""
    import hashlib

    from spark_core.model import models

    rx = _load("real_experiment")
    blob = bytes(range(256)) * 1000
    spec = models.REGISTRY["gemma-3-270m"]
    monkeypatch.setitem(models.REGISTRY, "fake", type(spec)(**{**spec.__dict__, "size": len(blob),
                                                               "sha256": hashlib.sha256(blob).hexdigest()}))
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    for i in range(0, len(blob), 60_000):
        (pieces / f"piece-{i // 60_000:02d}").write_bytes(blob[i : i + 60_000])
    assert rx.join_pieces(pieces, "fake", tmp_path / "m.gguf").read_bytes() == blob
    (pieces / "piece-02").unlink()
    with pytest.raises(ValueError, match="missing or cut short"):
        rx.join_pieces(pieces, "fake", tmp_path / "n.gguf")
    assert not (tmp_path / "n.gguf").exists() and not (tmp_path / "n.gguf.part").exists()
    assert rx.main(["--join", str(tmp_path / "none"), "fake", str(tmp_path / "o.gguf")]) == 2


def test_merge_results_folds_streams_into_one_table(tmp_path):
    """Rows run in separate streams join the table: a same (arm, seed) row is replaced, new ones
    added in arm order, seeds per arm and seconds updated; a source without a table exits 2."""
    import json

    import pyarrow.parquet as pq

    from spark_core.experiment import RESULT_SCHEMA, write_results

    def row(arm, seed, judge):
        return {f.name: None for f in RESULT_SCHEMA} | {"arm": arm, "seed": seed, "iterations": 150, "optimizer_steps": 900, "judge_accuracy": judge,
                "optimizer_steps_at_equal_steps": 900}

    out, src = tmp_path / "out", tmp_path / "w1"
    write_results([row("base", 0, 0.6), row("spark_weighted", 0, 0.5)], out,
                  {"iterations": 150, "seeds_per_arm": {"base": [0], "spark_weighted": [0]}, "seconds": 10.0, "note": "first"})
    write_results([row("spark_weighted", 1, 0.7), row("grpo_policy", 0, 0.4), row("base", 0, 0.61)], src,
                  {"iterations": 150, "seconds": 5.0})
    rx = _load("real_experiment")
    assert rx.main(["--merge", str(src), "--out", str(out)]) == 0
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [(r["arm"], r["seed"], r["judge_accuracy"]) for r in rows] == [
        ("base", 0, 0.61), ("grpo_policy", 0, 0.4), ("spark_weighted", 0, 0.5), ("spark_weighted", 1, 0.7)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seeds_per_arm"] == {"base": [0], "grpo_policy": [0], "spark_weighted": [0, 1]}
    assert meta["seconds"] == 15.0 and meta["note"].startswith("first; merged")
    assert "| spark_weighted | 900 |" in (out / "results.md").read_text()
    assert rx.main(["--merge", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert len(pq.read_table(out / "results.parquet")) == 4


def test_gpu_experiment_driver_at_micro_scale(tmp_path):
    """The Prefect-free driver the GPU script runs, on the tiny model at micro scale on this CPU:
    every arm's row, results written, equal-step columns filled."""
    import pyarrow.parquet as pq
    import yaml

    rx = _load("real_experiment")
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"path": str(ROOT / "data" / "tiny-model")}, "rollout": {"batch_prompts": 4, "group_size": 4},
        "train": {"mini_batch_size": 16}, "eval": {"problems": 8, "judge_problems": 6, "samples": 0, "tts": False}}))
    rows = rx.run(cfg, 1, [0], ["base", "grpo_policy", "spark_expected"], tmp_path / "root", tmp_path / "out")
    assert [r["arm"] for r in rows] == ["base", "grpo_policy", "spark_expected"]
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert len(table) == 3 and table[1]["optimizer_steps_at_equal_steps"] >= table[1]["optimizer_steps"]
    assert (tmp_path / "out" / "results.md").is_file() and (tmp_path / "out" / "coevolution.png").is_file()


def test_compare_arms_welch_and_paired_by_hand(tmp_path):
    """x = (0.5, 0.6, 0.7), y = (0.4, 0.4, 0.5): difference 0.1667; Welch t = 0.1667 / sqrt(0.01/3 +
    0.003333/3) = 2.5; paired differences (0.1, 0.2, 0.2): mean 0.1667, sd 0.0577, t = 5.0.
    A missing file or an arm with one seed is a one-line error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    mod = _load("compare_arms")
    rows = [{"arm": "a", "seed": s, "judge_accuracy": v} for s, v in enumerate((0.5, 0.6, 0.7))]
    rows += [{"arm": "b", "seed": s, "judge_accuracy": v} for s, v in enumerate((0.4, 0.4, 0.5))]
    rows += [{"arm": "c", "seed": 0, "judge_accuracy": 0.3}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    (r,) = mod.compare(tmp_path / "r.parquet", "a", "b", ["judge_accuracy"])
    assert r["difference"] == pytest.approx(1 / 6)
    assert r["welch_t"] == pytest.approx(2.5)
    assert r["paired_t"] == pytest.approx(5.0)
    assert 0 < r["paired_p"] < r["welch_p"] < 0.1
    with pytest.raises(SystemExit, match="arm 'c' has 1 seed"):
        mod.compare(tmp_path / "r.parquet", "a", "c", ["judge_accuracy"])
    assert mod.main([str(tmp_path / "missing.parquet"), "a", "b"]) == 2
    # a re-run of seed 0 as a fourth draw: Welch over (0.5, 0.6, 0.7, 0.6), the paired test unchanged
    pq.write_table(pa.Table.from_pylist([{"arm": "a", "seed": 0, "judge_accuracy": 0.6}]), tmp_path / "x.parquet")
    (r4,) = mod.compare(tmp_path / "r.parquet", "a", "b", ["judge_accuracy"], [tmp_path / "x.parquet"])
    assert r4["n"] == 4 and r4["mean"] == pytest.approx(0.6) and r4["paired_t"] == pytest.approx(5.0)
    # mean difference 0.6 - 0.4333 = 0.1667; se = sqrt(0.00667/4 + 0.00333/3) = 0.05270
    assert r4["welch_t"] == pytest.approx((0.6 - 1.3 / 3) / (0.02 / 3 / 4 + 0.01 / 3 / 3) ** 0.5)
