"""Task runners for sharded stages: a Ray cluster through prefect-ray (an optional extra).

Only paths cross the wire: a shard task reads the checkpoint and writes its Parquet part in
the run directory itself, so a remote cluster needs the run directory on storage every node
can read and write (the same path everywhere), and the project installed on every node.
"""

from __future__ import annotations

from spark_core.config import SparkConfig


def ray_task_runner(cfg: SparkConfig):
    """RayTaskRunner for `cfg.ray`: connect to `address`, or start a local cluster that lives as
    long as the flow run using it (started and stopped by the runner itself)."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as e:
        raise ValueError("runner: ray needs prefect-ray and ray: pip install -e '.[ray]'") from e
    r = cfg.ray
    if r.address:
        return RayTaskRunner(address=r.address)
    return RayTaskRunner(init_kwargs={"num_cpus": r.num_cpus, "object_store_memory": r.object_store_mb * 2**20,
                                      "include_dashboard": False, "log_to_driver": True})
