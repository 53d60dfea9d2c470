"""Task runners for sharded stages: a Ray cluster through prefect-ray (an optional extra).

Only paths cross the wire: a shard task reads the checkpoint and writes its Parquet part in
the run directory itself, so a remote cluster needs the run directory on storage every node
can read and write (the same path everywhere), and the project installed on every node.

The workers report their task runs to the flow's own Prefect API, never to one of their own.
prefect-ray hands each Ray task the flow's serialized settings, so a flow run against
Prefect's ephemeral mode (no PREFECT_API_URL) used to hand over "no API": each worker then
started a temporary server of its own, which under a busy CPU timed out and failed the shard.
`workers_api` makes the run's one API explicit (the configured server, or the parent's
temporary one, started once) and gives its URL to the workers both in the settings and in the
Ray job's environment, with ephemeral servers switched off there.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from spark_core.config import SparkConfig

log = logging.getLogger(__name__)

#: How long the parent waits for its temporary Prefect server (Prefect's own default is 20 s,
#: too short next to a busy CPU).
SERVER_STARTUP_S = 120


def flow_api_url() -> str:
    """The Prefect API this process talks to: PREFECT_API_URL when set, otherwise the temporary
    server of Prefect's ephemeral mode (the same one the flow run was created in; started here
    if it is not up yet)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # one per process: the instance get_client() started
    server.start(timeout=SERVER_STARTUP_S)
    return server.api_url


def worker_env(cfg: SparkConfig, api_url: str) -> dict[str, str]:
    """Environment of every Ray worker of the run: the flow's API, no server of their own, the
    same Prefect home and logging level, and one math thread pool per shard's CPUs."""
    from prefect.settings import PREFECT_HOME, PREFECT_LOGGING_LEVEL

    threads = str(max(1, int(cfg.ray.cpus_per_shard)))
    return {"PREFECT_API_URL": api_url, "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
            "PREFECT_HOME": str(Path(PREFECT_HOME.value()).expanduser().resolve()),
            "PREFECT_LOGGING_LEVEL": str(PREFECT_LOGGING_LEVEL.value()),
            "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}


def is_loopback(api_url: str) -> bool:
    return (urlparse(api_url).hostname or "") in ("127.0.0.1", "localhost", "::1")


@contextmanager
def workers_api(cfg: SparkConfig) -> Iterator[dict[str, str]]:
    """Within: this process's Prefect settings name the run's one API explicitly (so the
    settings prefect-ray serializes into each Ray task carry it) and ephemeral servers are off;
    yields the workers' environment (`worker_env`)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    url = flow_api_url()
    if cfg.ray.address and is_loopback(url):
        log.warning("ray.address is %s but the Prefect API is %s: workers on other nodes cannot reach it; "
                    "start the server on an address they can reach and set PREFECT_API_URL to it",
                    cfg.ray.address, url)
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_SERVER_EPHEMERAL_ENABLED: False}):
        yield worker_env(cfg, url)


def ray_task_runner(cfg: SparkConfig, env: dict[str, str] | None = None):
    """RayTaskRunner for `cfg.ray`: connect to `address`, or start a local cluster that lives as
    long as the flow run using it (started and stopped by the runner itself). `env` becomes the
    Ray job's environment (every worker's)."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as e:
        raise ValueError("runner: ray needs prefect-ray and ray: pip install -e '.[ray]'") from e
    r = cfg.ray
    job = {"runtime_env": {"env_vars": dict(env)}} if env else {}
    if r.address:
        return RayTaskRunner(address=r.address, init_kwargs=job)
    return RayTaskRunner(init_kwargs={"num_cpus": r.num_cpus, "object_store_memory": r.object_store_mb * 2**20,
                                      "include_dashboard": False, "log_to_driver": True} | job)


def shard_error(stage: str, shard: int, shards: int, exc: BaseException) -> str:
    """One line naming the shard and why it failed (a Ray error's own message runs to many
    lines: its traceback; the reason is its last non-empty line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[-1] if lines else ""
    name = type(getattr(exc, "cause", None) or exc).__name__
    if reason and not reason.startswith(name):
        reason = f"{name}: {reason}"
    return f"{stage} shard {shard} of {shards} failed: {reason or name}"


class ShardFailed(RuntimeError):
    """A shard of a sharded stage failed (its message: one line, see `shard_error`)."""
