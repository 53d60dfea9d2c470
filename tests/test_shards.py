"""Sharded rollouts (issue 17, item 1): `rollout.shards`, locally and on a local Ray cluster.

The Ray test starts its own two-worker local cluster through the flow (prefect-ray's runner
starts it and shuts it down with the subflow) and checks nothing of Ray is left running.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spark_core.config import load_config
from spark_core.iteration import run_iteration
from spark_core.rundir import FAULT_ENV, samples_path
from spark_core.stages.rollout import shard_range, shard_stage
from spark_core.stages.samples import read_samples
from spark_core.stages.verify import verify_shard_stage
from spark_core.periods import score
from spark_core.stages.problems import prepare_problems
from spark_core.data.store import manifest_path, read_manifest, read_table

ROOT = Path(__file__).resolve().parents[1]
MICRO = ("rollout:\n  batch_prompts: 6\n  group_size: 2\n  shards: 2\n"
         "eval:\n  every: 100\n  problems: 4\n  judge_problems: 2\n")


@given(st.integers(0, 500), st.integers(1, 16))
def test_shards_cover_every_prompt_once(n, shards):
    ranges = [shard_range(n, shards, i) for i in range(shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def _config(tmp_path, extra=""):
    path = tmp_path / "shards.yaml"
    path.write_text((ROOT / "configs" / "tiny.yaml").read_text() + MICRO + extra)
    return path


def _tables(run):
    out = {}
    for t in ("rollouts", "judge_data", "updates"):
        table = read_table(run, t)
        out[t] = table.drop([c for c in ("seconds", "run") if c in table.column_names])
    return out


def _complete(run, cfg, k=0):
    """Every policy prompt sampled once, G samples each, and the manifests name the shards."""
    tasks, groups = read_samples(samples_path(run, k, "policy"))
    ids = [t.prompt_id for t in tasks]
    assert len(ids) == len(set(ids)) == cfg.rollout.batch_prompts
    assert all(len(g) == cfg.rollout.group_size for g in groups)
    for i in range(cfg.rollout.shards):
        assert read_manifest(run, shard_stage("policy", i, cfg.rollout.shards), k)["shard"] == i
        assert read_manifest(run, verify_shard_stage("policy", i, cfg.rollout.shards), k)["shard"] == i
    place = read_manifest(run, "iteration", k)["placement"]
    assert place["rollout_shards"] == cfg.rollout.shards and len(place["rollout_policy_shards"]) == cfg.rollout.shards
    assert len(place["verify_policy_shards"]) == len(place["verify_reward_shards"]) == cfg.rollout.shards
    # The sharded verdicts give the rewards and advantages of verifying the samples in one piece.
    for phase in ("policy", "reward"):
        tasks, groups = read_samples(samples_path(run, k, phase))
        whole, _, _ = score(tasks, groups, phase, cfg.train.advantage, run=run.name)
        table = [r for r in read_table(run, "rollouts").to_pylist() if r["phase"] == phase and r["iteration"] == k]
        keys = ("prompt_id", "sample_index", "correct", "extracted", "rule", "reward")
        assert [tuple(r[c] for c in keys) for r in table] == [tuple(r[c] for c in keys) for r in whole]
        assert [r["advantage"] for r in table] == pytest.approx([r["advantage"] for r in whole], abs=1e-6)
    return place


def test_local_shards_are_reproducible_and_a_killed_shard_is_redone_alone(tmp_path):
    cfg = load_config(_config(tmp_path))
    a, b, killed = tmp_path / "a", tmp_path / "b", tmp_path / "killed"
    for run in (a, b, killed):
        prepare_problems(cfg, run)
    run_iteration(cfg, a, 0)
    run_iteration(cfg, b, 0)
    _complete(a, cfg)
    ta, tb = _tables(a), _tables(b)
    assert all(ta[t].equals(tb[t]) for t in ta)
    # shard 1 of the policy rollout is SIGKILLed after writing its part, before its manifest
    script = textwrap.dedent(f"""
        from spark_core.config import load_config
        from spark_core.stages.rollout import rollout_shard
        cfg = load_config({str(_config(tmp_path))!r})
        rollout_shard(cfg, {str(killed)!r}, 0, "policy", 0)
        rollout_shard(cfg, {str(killed)!r}, 0, "policy", 1)
    """)
    env = os.environ | {FAULT_ENV: shard_stage("policy", 1, 2), "OMP_NUM_THREADS": str(__import__("torch").get_num_threads())}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, cwd=ROOT)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    first = manifest_path(killed, shard_stage("policy", 0, 2), 0)
    assert first.is_file() and not manifest_path(killed, shard_stage("policy", 1, 2), 0).exists()
    stamp = first.stat().st_mtime_ns
    run_iteration(cfg, killed, 0)
    assert first.stat().st_mtime_ns == stamp  # the finished shard was not redone
    tk = _tables(killed)
    assert all(ta[t].equals(tk[t]) for t in ta)


def _ray_alive() -> list[str]:
    """Ray processes still running (a zombie awaiting its reaper is not running, as in test_services)."""
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if any(w in line for w in ("raylet", "gcs_server", "ray::", "default_worker.py"))
            and not line.split()[1].startswith("Z")]


def test_ray_shards_through_the_flow(prefect_api, tmp_path):
    pytest.importorskip("prefect_ray", reason="runner: ray needs the ray extra (pip install -e '.[ray]')")
    from flows.spark_flow import spark

    before = _ray_alive()
    config = _config(tmp_path, "runner: ray\nray:\n  num_cpus: 2\n  object_store_mb: 128\n"
                              "train:\n  processes: 2\n  mini_batch_size: 8\n  micro_batch_size: 2\n")
    cfg = load_config(config)
    data = tmp_path / "data"
    for name in ("r1", "r2"):
        assert spark(run=name, config=str(config), data_dir=str(data))["iterations"] == 1
    r1, r2 = data / "runs" / "r1", data / "runs" / "r2"
    place = _complete(r1, cfg)
    assert place["runner"] == "ray" and place["train_processes"] == 2
    pids = {s["pid"] for s in place["rollout_policy_shards"]}
    assert os.getpid() not in pids  # the shards ran in Ray's worker processes
    t1, t2 = _tables(r1), _tables(r2)
    assert all(t1[t].equals(t2[t]) for t in t1)
    assert _ray_alive() == before, "Ray processes were left running"


def _prefect_servers() -> dict[int, int]:
    """pid -> parent pid of every Prefect API server process running (Prefect's temporary
    server runs `uvicorn ... prefect.server.api.server:create_app`)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"prefect.server.api.server:create_app" in cmd:
                out[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
    return out


def test_ray_flow_with_the_cpu_busy_uses_the_flows_api_and_names_a_failed_shard(tmp_path):
    """Issue 30: `python -m flows.spark_flow` in Prefect's ephemeral mode (no API URL, an empty
    PREFECT_HOME, as a new user runs it) with a busy process beside it (two made the test 627 s,
    beyond the CI budget). A shard whose worker dies fails the run with one line naming the shard;
    the re-run redoes that shard only and completes; every Prefect server process seen meanwhile
    is the flow process's own."""
    pytest.importorskip("prefect_ray", reason="runner: ray needs the ray extra (pip install -e '.[ray]')")
    import threading

    config = _config(tmp_path, "runner: ray\nray:\n  num_cpus: 2\n  object_store_mb: 128\n")
    cfg = load_config(config)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "flows.spark_flow", "--config", str(config), "--run", str(run), "--iterations", "1"]
    before = set(_prefect_servers())
    seen: dict[int, int] = {}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.update({p: pp for p, pp in _prefect_servers().items() if p not in before})
            stop.wait(0.2)

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]  # a busy core beside the flow
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        killed = shard_stage("policy", 1, 2)
        flows = [subprocess.Popen(cmd, env=env | {FAULT_ENV: killed}, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)]
        out = flows[0].communicate(timeout=900)[0]
        assert flows[0].returncode == 1, out[-3000:]
        errors = [ln for ln in out.splitlines() if ln.startswith("error:")]  # Prefect's exit logs may follow it
        assert len(errors) == 1 and errors[0].startswith("error: rollout_policy (iteration 0) shard 1 of 2 failed: "
                                                         "WorkerCrashedError"), out[-3000:]
        first = manifest_path(run, shard_stage("policy", 0, 2), 0)
        assert first.is_file() and not manifest_path(run, killed, 0).exists()
        stamp = first.stat().st_mtime_ns
        flows.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
        out = flows[1].communicate(timeout=900)[0]
        assert flows[1].returncode == 0, out[-3000:]
    finally:
        stop.set()
        watcher.join()
        for h in hogs:
            h.kill()
            h.wait()
    assert first.stat().st_mtime_ns == stamp  # the finished shard was not redone
    place = _complete(run, cfg)
    assert all(s["pid"] not in (f.pid for f in flows) for s in place["rollout_policy_shards"])  # ran on Ray
    assert seen and set(seen.values()) <= {f.pid for f in flows}, f"a Prefect server not started by the flow: {seen}"
    assert out.count("Starting temporary server") <= 1, out[-3000:]


def test_a_failed_shard_is_one_line_naming_it():
    from flows.runners import shard_error

    class Crashed(Exception):
        pass

    e = Crashed("ray::rollout-shard() (pid=7, ip=10.0.0.2)\n  File \"x.py\", line 3\n\nThe worker died unexpectedly.\n")
    line = shard_error("rollout_policy (iteration 2)", 1, 4, e)
    assert line == "rollout_policy (iteration 2) shard 1 of 4 failed: Crashed: The worker died unexpectedly."
    assert "\n" not in shard_error("verify_reward (iteration 0)", 0, 2, Crashed(""))
