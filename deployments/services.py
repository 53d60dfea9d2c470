"""Start, stop and inspect the local services: the Prefect server and the process serving `spark/iterate`.

    python -m deployments.services start    # server on 127.0.0.1, SQLite under DATA/prefect/, then serve
    python -m deployments.services status
    python -m deployments.services stop     # nothing of ours is left running afterwards
    python -m deployments.services mlflow-ui   # the MLflow UI on 127.0.0.1:5000 over DATA/mlflow/mlflow.db

Both run detached (their own sessions), log to DATA/prefect/*.log, and are recorded in
DATA/prefect/services.json. `stop` also ends the flow runs the serving process started (the
Prefect runner starts each in a session of its own), found by walking /proc.
The repository's prefect.toml points `prefect` commands run from the repository root at this
server, so `prefect deployment run spark/iterate --watch` works as written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.local import http_status
from spark_core import REPO
from spark_core.tracking import default_data_dir

DEFAULT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000


def prefect_env(data_dir: Path, port: int) -> dict[str, str]:
    """Environment for every process of ours that talks to (or is) the local server."""
    home = data_dir / "prefect"
    return os.environ | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "spark_core",
        "SPARK_DATA_DIR": str(data_dir),
    }


def _state_path(data_dir: Path) -> Path:
    return data_dir / "prefect" / "services.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")  # zombies are gone


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait(what: str, check, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise SystemExit(f"{what} exited with code {proc.returncode}; last lines of {log}:\n{tail}")
        time.sleep(0.5)
    raise SystemExit(f"{what} not ready after {timeout:.0f}s; see {log}")


def _read_state(data_dir: Path) -> dict:
    path = _state_path(data_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def status(data_dir: Path, port: int = DEFAULT_PORT) -> dict:
    """What runs: pids alive, the API healthy, the deployment registered (`port` when nothing is recorded)."""
    st = _read_state(data_dir)
    port = st.get("port", port)
    api = f"http://127.0.0.1:{port}/api"
    return {
        "server": bool(st.get("server_pid")) and _alive(st["server_pid"]),
        "serve": bool(st.get("serve_pid")) and _alive(st["serve_pid"]),
        "api_healthy": http_status(f"{api}/health") == 200,
        "deployment": http_status(f"{api}/deployments/name/spark/iterate") == 200,
        "api_url": api,
        **{k: st[k] for k in ("server_pid", "serve_pid") if k in st},
    }


def start(data_dir: Path, port: int = DEFAULT_PORT, timeout: float = 180.0, serve: bool = True) -> dict:
    """Start the server and the serving process unless they already run; wait until both answer.

    `serve=False` starts only the server (for a work pool and `prefect worker start`, see
    deployments/prefect.yaml: a serving process would take the deployment's runs itself)."""
    now = status(data_dir, port)
    if now["server"] and now["api_healthy"] and (not serve or (now["serve"] and now["deployment"])):
        print(f"already running: {now['api_url']}")
        return now
    stop(data_dir, quiet=True)  # a half-started set (one process died) is restarted whole
    if http_status(f"http://127.0.0.1:{port}/api/health") != 0:
        raise SystemExit(f"port {port} on 127.0.0.1 is taken by another program; stop it or pass --port")
    home = data_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = prefect_env(data_dir, port)
    server_log, serve_log = home / "server.log", home / "serve.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=env, stdout=open(server_log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    state = {"server_pid": server.pid, "port": port, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    _state_path(data_dir).write_text(json.dumps(state))
    api = env["PREFECT_API_URL"]
    _wait("prefect server", lambda: http_status(f"{api}/health") == 200, server, server_log, timeout)
    print(f"prefect server: {api} (UI http://127.0.0.1:{port}), database {home / 'prefect.db'}")
    if not serve:
        return status(data_dir, port)
    serve = subprocess.Popen(
        [sys.executable, "-m", "deployments.iterate"], cwd=REPO, env=env, stdout=open(serve_log, "ab"),
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    state["serve_pid"] = serve.pid
    _state_path(data_dir).write_text(json.dumps(state))
    _wait("deployment spark/iterate", lambda: http_status(f"{api}/deployments/name/spark/iterate") == 200, serve, serve_log, timeout)
    print(f"serving spark/iterate (pid {serve.pid}); logs in {home}")
    return status(data_dir, port)


def _terminate(pids: list[int], grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        if not any(_alive(p) for p in pids):
            return


def stop(data_dir: Path, quiet: bool = False, grace: float = 15.0) -> list[int]:
    """Stop the serving process (and the flow runs it started), then the server; returns pids still alive."""
    st = _read_state(data_dir)
    for key in ("serve_pid", "server_pid"):  # serve first: it reports its runs as it shuts down
        pid = st.get(key)
        if pid and _alive(pid):
            tree = [pid] + descendants(pid)
            _terminate(tree, grace)
            if not quiet:
                print(f"stopped {key.removesuffix('_pid')} (pid {pid}, {len(tree) - 1} child process(es))")
    left = [p for p in (st.get("serve_pid"), st.get("server_pid")) if p and _alive(p)]
    if not left:
        _state_path(data_dir).unlink(missing_ok=True)
    elif not quiet:
        print(f"still running: {left}")
    return left


def mlflow_ui_command(data_dir: Path, port: int = DEFAULT_MLFLOW_PORT) -> list[str]:
    """The MLflow UI over the SQLite tracking store, bound to the loopback interface only."""
    from spark_core.tracking import ui_args

    return [str(Path(sys.executable).with_name("mlflow")), *ui_args(data_dir, port)[1:]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("start", "stop", "status", "mlflow-ui"))
    ap.add_argument("--data-dir", type=Path, default=None, help="default: SPARK_DATA_DIR or the repository's data/")
    ap.add_argument("--port", type=int, default=int(os.environ.get("SPARK_PREFECT_PORT", DEFAULT_PORT)))
    ap.add_argument("--mlflow-port", type=int, default=DEFAULT_MLFLOW_PORT, help="mlflow-ui: its port on 127.0.0.1")
    ap.add_argument("--server-only", action="store_true", help="start: no serving process (for a work pool and worker)")
    a = ap.parse_args(argv)
    data_dir = (a.data_dir or default_data_dir()).resolve()
    if a.action == "mlflow-ui":  # in the foreground, until Ctrl-C
        cmd = mlflow_ui_command(data_dir, a.mlflow_port)
        print(f"MLflow UI: http://127.0.0.1:{a.mlflow_port} ({cmd[-1]})", flush=True)
        return subprocess.call(cmd, cwd=REPO)
    if a.action == "start":
        start(data_dir, a.port, serve=not a.server_only)
    elif a.action == "stop":
        return 1 if stop(data_dir) else 0
    else:
        st = status(data_dir, a.port)
        print(json.dumps(st, indent=2))
        return 0 if st["api_healthy"] and st["deployment"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
