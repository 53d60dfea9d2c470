"""The embedded deployment end to end: local server + serving process, `prefect deployment run
spark/iterate --watch` as a user types it, then stop leaves nothing of ours running."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from deployments.services import descendants, main, status
from spark_core.data.store import read_table

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_services_serve_iterate_and_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_RUNNER_POLL_FREQUENCY", "1")  # the serve process picks the run up in 1 s, not 10
    data, port = tmp_path / "data", _free_port()
    config = tmp_path / "small.yaml"
    config.write_text((ROOT / "configs" / "tiny.yaml").read_text()
                      + "rollout:\n  batch_prompts: 4\n  group_size: 2\neval:\n  problems: 4\n  judge_problems: 2\n")
    args = ["--data-dir", str(data), "--port", str(port)]
    try:
        assert main(["start", *args]) == 0
        st = status(data, port)
        assert st["server"] and st["serve"] and st["api_healthy"] and st["deployment"]
        assert main(["start", *args]) == 0  # already running: a no-op
        assert status(data, port)["serve_pid"] == st["serve_pid"]
        env = os.environ | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(data / "prefect")}
        prefect = str(Path(sys.executable).with_name("prefect"))
        r = subprocess.run([prefect, "deployment", "run", "spark/iterate", "--param", f"config={config}", "--watch"],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        assert read_table(data / "runs" / "tiny", "rollouts").num_rows > 0  # the served flow wrote the run
        assert (data / "mlflow" / "mlflow.db").is_file()
        ray_config = tmp_path / "ray.yaml"  # issue 30: the Ray shards through the deployment
        ray_config.write_text(config.read_text() + "runner: ray\nray:\n  num_cpus: 2\n  object_store_mb: 128\n"
                              "rollout:\n  batch_prompts: 4\n  group_size: 2\n  shards: 2\n")
        r = subprocess.run([prefect, "deployment", "run", "spark/iterate", "--param", f"config={ray_config}",
                            "--param", "run=ray", "--watch"], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        shards = _task_runs(env["PREFECT_API_URL"], "rollout-policy-0-shard-")
        assert sorted(t["name"] for t in shards) == ["rollout-policy-0-shard-0", "rollout-policy-0-shard-1"]
        assert all(t["state_type"] == "COMPLETED" for t in shards), shards
        assert len({t["flow_run_id"] for t in shards}) == 1  # both in the Ray subflow of the deployment's run
        pids = [st["server_pid"], st["serve_pid"], *descendants(st["server_pid"]), *descendants(st["serve_pid"])]
    finally:
        main(["stop", *args])
    st = status(data, port)
    assert not (st["server"] or st["serve"] or st["api_healthy"])
    for pid in pids:  # nothing of ours left (a zombie awaiting its reaper is not running)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", pid


def _task_runs(api_url: str, prefix: str) -> list[dict]:
    """Task runs whose name starts with `prefix`, from the Prefect API (what its UI shows)."""
    import json
    import urllib.request

    body = json.dumps({"task_runs": {"name": {"like_": prefix}}}).encode()
    req = urllib.request.Request(api_url.rstrip("/") + "/task_runs/filter", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return [t for t in json.load(r) if t["name"].startswith(prefix)]


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of `pids` holds (from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (FileNotFoundError, PermissionError):
            continue
    out = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A: LISTEN
                continue
            addr, port = f[1].split(":")
            raw = bytes.fromhex(addr)
            if family == 4:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four little-endian 32-bit words
                ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            out.add((ip, int(port, 16)))
    return out


def _loopback_only(pids: list[int], port: int) -> None:
    socks = listening(pids)
    assert (("127.0.0.1", port) in socks), socks
    assert all(ip == "127.0.0.1" for ip, _ in socks), f"a socket listens beyond the loopback interface: {socks}"


def test_prefect_server_binds_loopback_only(tmp_path):
    data, port = tmp_path / "data", _free_port()
    args = ["--data-dir", str(data), "--port", str(port)]
    try:
        assert main(["start", "--server-only", *args]) == 0
        st = status(data, port)
        _loopback_only([st["server_pid"], *descendants(st["server_pid"])], port)
    finally:
        main(["stop", *args])


def test_mlflow_ui_binds_loopback_only(tmp_path):
    import time

    from deployments.services import _terminate
    from flows.local import http_status

    data, port = tmp_path / "data", _free_port()
    (data / "mlflow").mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "deployments.services", "mlflow-ui", "--data-dir", str(data),
                             "--mlflow-port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while http_status(f"http://127.0.0.1:{port}/health") != 200:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the MLflow UI did not answer within 120 s"
            time.sleep(0.5)
        _loopback_only([proc.pid, *descendants(proc.pid)], port)
    finally:
        _terminate([proc.pid, *descendants(proc.pid)], 10)


_QUEUE = """
import asyncio, json, sys, time
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

config, n = sys.argv[1], int(sys.argv[2])
ids = [run_deployment("spark/iterate", parameters={"config": config}, timeout=0).id for _ in range(n)]

async def states():
    async with get_client() as client:
        runs = [await client.read_flow_run(i) for i in ids]
    return [{"id": str(r.id), "state": r.state.type.value, "start": r.start_time.timestamp() if r.start_time else None,
             "end": r.end_time.timestamp() if r.end_time else None} for r in runs]

deadline = time.monotonic() + 1500
while True:
    now = asyncio.run(states())
    if all(r["state"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in now) or time.monotonic() > deadline:
        break
    time.sleep(3)
print(json.dumps(now))
"""


def test_twenty_queued_runs_take_turns(tmp_path, monkeypatch):
    """20 runs of spark/iterate queued at once on one run directory: one at a time, every one
    completed, iterations 0-19 each done once (issue 20, item 5). The runner looks for the next
    run every second here instead of Prefect's 10 (an idle wait after each of the 20 runs; the
    turn-taking is the same)."""
    import json

    monkeypatch.setenv("PREFECT_RUNNER_POLL_FREQUENCY", "1")  # inherited by the serve process

    data, port = tmp_path / "data", _free_port()
    config = tmp_path / "micro.yaml"
    config.write_text((ROOT / "configs" / "tiny.yaml").read_text()
                      + "rollout:\n  batch_prompts: 4\n  group_size: 2\n"
                      + "eval:\n  every: 1000\n  problems: 4\n  judge_problems: 2\n")
    args = ["--data-dir", str(data), "--port", str(port)]
    try:
        assert main(["start", *args]) == 0
        env = os.environ | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(data / "prefect")}
        r = subprocess.run([sys.executable, "-c", _QUEUE, str(config), "20"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=1600)
        assert r.returncode == 0, r.stderr[-3000:]
        runs = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        main(["stop", *args])
    assert [x["state"] for x in runs] == ["COMPLETED"] * 20, runs
    spans = sorted((x["start"], x["end"]) for x in runs)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), "two runs overlapped"
    run = data / "runs" / "tiny"
    manifests = sorted(int(p.name.split("=")[1]) for p in (run / "manifests").glob("iteration=*")
                       if (p / "iteration.json").is_file())
    assert manifests == list(range(20))  # contiguous, none lost, none extra
    rollouts = read_table(run, "rollouts").to_pylist()
    per = {}
    for row in rollouts:
        key = (row["iteration"], row["phase"], row["prompt_id"], row["sample_index"])
        per[key] = per.get(key, 0) + 1
    assert set(per.values()) == {1}  # no rollout written twice
    assert sorted({k[0] for k in per}) == list(range(20))
