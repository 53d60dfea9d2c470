"""`rollout.engine: vllm`: vLLM in its own process (spark_core/model/vllm_process.py), and the
log-prob check that compares any engine's log-probs with the trainer's (model/logprob_check.py).

The engine tests need an interpreter with vLLM (`.venv-vllm`, made by `scripts/setup.sh --vllm`,
or vLLM in this one): they skip without one, and fail instead under SPARK_REQUIRE_VLLM=1, which
`.ci/run` sets after making it. The log-prob check tests need only the HF engine.
"""

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spark_core.model.checkpoint import load_checkpoint
from spark_core.model.logprob_check import check_groups, diff_stats, recompute_logprobs
from spark_core.model.rollout import EngineError, SamplingSpec, make_engine
from spark_core.model.vllm_process import vllm_python

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "tiny-model"


def _vllm() -> str:
    try:
        return vllm_python("auto")
    except EngineError as e:
        if os.environ.get("SPARK_REQUIRE_VLLM") == "1":
            pytest.fail(f"vLLM is required here (SPARK_REQUIRE_VLLM=1): {e}")
        pytest.skip(f"no interpreter with vLLM: {e}")


# --------------------------------------------------------------------------- the log-prob check


def test_diff_stats_by_hand():
    engine = [[-1.0, -2.0], [-0.5]]
    mine = [[-1.1, -2.0], [-0.3]]
    d = diff_stats(engine, mine)
    assert d["tokens"] == 3
    assert d["abs_diff_mean"] == pytest.approx((0.1 + 0.0 + 0.2) / 3)
    assert d["abs_diff_max"] == pytest.approx(0.2)
    assert d["ratio_min"] == pytest.approx(math.exp(-0.1)) and d["ratio_max"] == pytest.approx(math.exp(0.2))
    assert diff_stats([], [])["tokens"] == 0


@pytest.fixture(scope="module")
def hf_groups():
    eng = make_engine("hf", TINY, device="cpu", dtype="float32")
    try:
        return eng.generate(["12+34", "5-3", "7+8"], SamplingSpec(group_size=3, temperature=0.7, max_new_tokens=12, seed=3))
    finally:
        eng.close()


def test_recomputed_logprobs_equal_the_hf_engines(hf_groups, monkeypatch):
    rows = [s for g in hf_groups for s in g]
    model, _ = load_checkpoint(TINY, "cpu", torch.float32)
    blocked = recompute_logprobs(model, rows, 0.7)
    assert diff_stats([s.logprobs for s in rows], blocked)["abs_diff_max"] < 1e-4
    import spark_core.model.logprob_check as lc

    monkeypatch.setattr(lc, "head_parts", lambda m: None)  # the full-logits path gives the same numbers
    direct = recompute_logprobs(model, rows, 0.7)
    assert diff_stats(blocked, direct)["abs_diff_max"] < 1e-5
    wrong_t = recompute_logprobs(model, rows, 1.0)  # at another temperature they differ: the check can fail
    assert diff_stats([s.logprobs for s in rows], wrong_t)["abs_diff_mean"] > 1e-3


def test_the_trainer_gets_recomputed_logprobs_only_beyond_the_tolerance(hf_groups):
    off = [[replace(s, logprobs=[x - 0.05 for x in s.logprobs]) for s in g] for g in hf_groups]  # an engine 0.05 off
    kept, doc = check_groups(TINY, off, 0.7, autocast=False, tolerance=0.1)
    assert doc["old_logprobs"] == "engine" and kept == off
    assert doc["abs_diff_mean"] == pytest.approx(0.05, abs=1e-4)
    fixed, doc = check_groups(TINY, off, 0.7, autocast=False, tolerance=1e-3)
    assert doc["old_logprobs"] == "recomputed"
    for g, h in zip(fixed, hf_groups):
        for s, t in zip(g, h):
            assert s.token_ids == t.token_ids and max(abs(a - b) for a, b in zip(s.logprobs, t.logprobs)) < 1e-4


def test_an_interpreter_that_is_not_there_is_one_line():
    with pytest.raises(EngineError, match="rollout.vllm_python: /no/such/python does not exist"):
        vllm_python("/no/such/python")


# --------------------------------------------------------------------------- the engine process


def test_the_vllm_engine_matches_the_interface_and_reruns_the_same_rows():
    _vllm()
    spec = SamplingSpec(group_size=3, temperature=1.0, max_new_tokens=8, seed=0)
    eng = make_engine("vllm", TINY, device="cpu", seed=0)
    try:
        first = eng.generate(["1+1", "23-4"], spec)
        again = eng.generate(["1+1", "23-4"], spec)
        other = eng.generate(["1+1", "23-4"], replace(spec, seed=1))
        assert eng.eos_ids == [1]
    finally:
        eng.close()
    assert [len(g) for g in first] == [3, 3]
    for g in first:
        for s in g:
            assert len(s.logprobs) == len(s.token_ids) and s.finish_reason in ("stop", "length")
            assert s.finish_reason == "length" or s.token_ids[-1] == 1  # a stop keeps its end token
    assert [[s.token_ids for s in g] for g in first] == [[s.token_ids for s in g] for g in again]
    assert [[s.logprobs for s in g] for g in first] != [[s.logprobs for s in g] for g in other]


def _group_of(pid: int) -> list[int]:
    """Pids of the live processes in process group `pid`."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pid and fields[0] != "Z":  # pgrp, state (a zombie is gone already)
                out.append(int(p.name))
    return out


def _worker_of(parent: int) -> int | None:
    """The vllm_worker process whose parent is `parent`."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if b"spark_core.model.vllm_worker" in cmd and ppid == parent:
                return int(p.name)
    return None


TINY_VLLM = """
seed: 0
problems: {source: synthetic, n_train: 200, n_held_out: 20}
rollout: {engine: vllm, batch_prompts: 4, group_size: 4}
train: {mini_batch_size: 16}
eval: {every: 1000}  # the kill and the re-run are about the rollout stage; each engine start costs ~30 s
"""


@pytest.mark.slow
def test_a_stage_killed_with_sigkill_leaves_no_engine_and_a_rerun_completes(tmp_path):
    """`spark iterate` SIGKILLed while its rollout stage's engine runs: the worker and vLLM's
    engine-core processes end with it; the re-run redoes the stage and finishes the iteration."""
    _vllm()
    config = tmp_path / "tiny-vllm.yaml"
    config.write_text(TINY_VLLM)
    cmd = [str(Path(sys.executable).with_name("spark")), "iterate", "-c", str(config), "--run", str(tmp_path / "run")]
    spark = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        worker = None
        while time.monotonic() < deadline and spark.poll() is None:
            worker = worker or _worker_of(spark.pid)
            if worker and len(_group_of(worker)) >= 2:  # vLLM's engine core has started beside it
                break
            time.sleep(0.5)
        assert worker and len(_group_of(worker)) >= 2, "no vLLM engine process appeared"
        time.sleep(3)
        spark.send_signal(signal.SIGKILL)
        spark.wait()
        deadline = time.monotonic() + 30
        while _group_of(worker) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _group_of(worker) == [], "vLLM processes outlived the killed stage"
    finally:
        if spark.poll() is None:
            spark.kill()
    assert not (tmp_path / "run" / "manifests" / "iteration=0" / "rollout_policy.json").exists()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "iteration 0:" in r.stdout + r.stderr


REAL = ROOT / "data" / "models" / "qwen2.5-coder-0.5b-instruct"
REAL_VLLM = """
seed: 0
problems: {source: synthetic, n_train: 200, n_held_out: 20}
model: {path: %s}
prompts: {solve: concise}
rollout: {engine: vllm, device: cpu, dtype: float32, batch_prompts: 2, group_size: 2, max_new_tokens: 40, judge_max_new_tokens: 32}
train: {lr: 1.0e-5, mini_batch_size: 4, micro_batch_size: 2, lora: {rank: 8, alpha: 16}}
spark: {template_set: paper, balance_labels: true}
eval: {problems: 2, samples: 0, judge_problems: 0, tts: false}  # no judge set: one engine start fewer (~60 s)
"""


@pytest.mark.slow
def test_a_real_model_lora_iteration_through_vllm(tmp_path):
    """Qwen2.5-Coder-0.5B-Instruct, LoRA, every stage's sampling through the vLLM process: the
    reward phase and evaluation sample from merged adapters (and leave no merged folder), and
    each training rollout's manifest reports its log-probs against the trainer's. (The judge set
    is left out: it samples the base model, which the rollout_policy stage already covers.)"""
    import json

    _vllm()
    if not (REAL / "spark_model.json").is_file():
        if os.environ.get("SPARK_REQUIRE_REAL_MODEL") == "1":
            pytest.fail(f"{REAL}: the real model is required here (SPARK_REQUIRE_REAL_MODEL=1) but not fetched")
        pytest.skip(f"{REAL} not fetched: run `spark model fetch qwen2.5-coder-0.5b-instruct`")
    config = tmp_path / "real-vllm.yaml"
    config.write_text(REAL_VLLM % REAL)
    run = tmp_path / "run"
    r = subprocess.run([str(Path(sys.executable).with_name("spark")), "iterate", "-c", str(config), "--run", str(run)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    for phase in ("policy", "reward"):
        doc = json.loads((run / "manifests" / "iteration=0" / f"rollout_{phase}.json").read_text())
        assert doc["engine"] == "vllm"
        check = doc["logprob_check"]
        assert check["tokens"] == doc["rows"]["tokens"] > 0
        assert check["abs_diff_mean"] < 1e-3 and check["old_logprobs"] == "engine", check  # float32 both sides
    assert json.loads((run / "manifests" / "iteration=0" / "evaluate.json").read_text())["rows"]["evals"] > 0
    assert not list((run / "checkpoints").glob(".*merged*")), "a merged-adapter folder was left behind"
