"""The embedded deployment end to end: local server + serving process, `prefect deployment run
spark/iterate --watch` as a user types it, then stop leaves nothing of ours running."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from deployments.services import descendants, main, status
from spark_core.store import read_table

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_services_serve_iterate_and_stop(tmp_path):
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
        pids = [st["server_pid"], st["serve_pid"], *descendants(st["server_pid"]), *descendants(st["serve_pid"])]
    finally:
        main(["stop", *args])
    st = status(data, port)
    assert not (st["server"] or st["serve"] or st["api_healthy"])
    for pid in pids:  # nothing of ours left (a zombie awaiting its reaper is not running)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", pid
