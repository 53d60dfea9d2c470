"""MLflow tracking: one MLflow run per SPARK run, metrics stepped by iteration, a co-evolution plot.

The store is local: a SQLite database and an artifact folder under the data directory, with
absolute URIs, so results do not depend on the working directory (`mlflow ui` reads the same
store from anywhere). The MLflow run id is kept in `RUN/mlflow.json`, so every flow run on the
same run directory appends to the same MLflow run. Metrics come from the `iteration`
manifests, not from live objects, so tracking can be redone (or done later) from the files.
Logging an iteration twice is avoided with a marker metric written in the same batch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from spark_core import REPO
from spark_core.config import SparkConfig
from spark_core.data.store import atomic_write_bytes, read_manifest
from spark_core.timing import timed

log = logging.getLogger(__name__)

EXPERIMENT = "spark"
EXPERIMENT_ARMS = "spark-experiment"  # where `spark experiment` nests its arms
MARKER = "iteration"  # logged with each iteration's batch; its history says which are done


def default_data_dir() -> Path:
    """`SPARK_DATA_DIR`, else the repository's `data/` folder."""
    return Path(os.environ.get("SPARK_DATA_DIR") or REPO / "data").resolve()


def tracking_uri(data_dir: str | Path) -> str:
    return f"sqlite:///{(Path(data_dir) / 'mlflow' / 'mlflow.db').resolve()}"


def artifact_location(data_dir: str | Path) -> str:
    return (Path(data_dir) / "mlflow" / "artifacts").resolve().as_uri()


def ui_args(data_dir: str | Path, port: int = 5000) -> list[str]:
    """`mlflow ui` over the tracking store, bound to the loopback interface only (tested)."""
    return ["mlflow", "ui", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", tracking_uri(data_dir)]


def ui_command(data_dir: str | Path) -> str:
    return " ".join(ui_args(data_dir))


_ALLOWED = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_name(name: str) -> str:
    """An MLflow-legal metric name (alphanumerics, `_-. :/`); anything else becomes `_`."""
    return _ALLOWED.sub("_", name)


def _flatten(data: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def _client(data_dir: Path):
    from mlflow.tracking import MlflowClient

    (Path(data_dir) / "mlflow").mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri(data_dir))


def _recorded_run(client, folder: Path, data_dir: Path, experiment: str, run_name: str, tags: dict[str, str],
                  params: dict[str, str]) -> str:
    """The MLflow run recorded in FOLDER/mlflow.json: resumed when it is in this store, created
    otherwise (with `tags` and `params`, then recorded)."""
    record = Path(folder) / "mlflow.json"
    if record.is_file():
        doc = json.loads(record.read_text())
        if doc.get("tracking_uri") == tracking_uri(data_dir):
            try:
                return client.get_run(doc["run_id"]).info.run_id
            except Exception:  # the store was deleted or replaced: start a new MLflow run
                log.warning("MLflow run %s not found in %s; creating a new one", doc["run_id"], tracking_uri(data_dir))
    run = client.create_run(experiment_id(client, experiment, data_dir), run_name=run_name, tags=tags)
    from mlflow.entities import Param

    batch = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(batch), 100):
        client.log_batch(run.info.run_id, params=batch[i : i + 100])
    atomic_write_bytes(record, json.dumps({"run_id": run.info.run_id, "tracking_uri": tracking_uri(data_dir)}).encode())
    return run.info.run_id


def _run_id(client, cfg: SparkConfig, run_dir: Path, data_dir: Path, experiment: str = EXPERIMENT,
            parent_run_id: str | None = None) -> str:
    """The MLflow run of this SPARK run, with the config as params; nested under `parent_run_id`
    when given (the experiment's arms)."""
    tags = {"spark.run_dir": str(run_dir.resolve())} | ({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})
    return _recorded_run(client, run_dir, data_dir, experiment, run_dir.name, tags, _flatten(cfg.resolved()))


def experiment_id(client, name: str, data_dir: Path) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_location(data_dir))


def iteration_metrics(run_dir: Path, k: int) -> dict[str, float]:
    """Iteration k's numeric metrics and per-stage seconds, from its `iteration` manifest."""
    doc = read_manifest(run_dir, "iteration", k)
    if doc is None:
        raise FileNotFoundError(f"{run_dir}: iteration {k} is not complete (no manifest)")
    out = {m: float(v) for m, v in doc.get("metrics", {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out |= {f"seconds/{s}": float(v) for s, v in doc.get("stage_seconds", {}).items()}
    out["seconds/iteration"] = float(doc.get("seconds") or 0.0)
    return out


@timed("plot")
def coevolution_plot(run_dir: Path, out: Path) -> Path:
    """Policy accuracy and judge accuracy against iteration, from every completed iteration."""
    import matplotlib

    matplotlib.use("Agg")

    series: dict[str, list[tuple[int, float]]] = {}
    names = {
        "policy/solve_accuracy": "policy accuracy (sampled, training problems)",
        "eval/policy_accuracy": "policy accuracy (greedy, held out)",
        "reward/pointwise_accuracy": "judge pointwise (sampled, recycled)",
        "reward/pairwise_accuracy": "judge pairwise (sampled, recycled)",
        "eval/judge_accuracy": "judge accuracy (greedy, held out)",
        "reward/reflection_accuracy": "reflection (sampled, recycled)",
    }
    k = 0
    while (doc := read_manifest(run_dir, "iteration", k)) is not None:
        for key in names:
            if key in doc.get("metrics", {}):
                series.setdefault(key, []).append((k, doc["metrics"][key]))
        k += 1
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot state) with a fixed layout: tight_layout measured half the cost
    # of drawing, and this runs every iteration.
    fig = Figure(figsize=(7, 4))
    ax = fig.add_axes((0.09, 0.12, 0.88, 0.8))
    for key, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=names[key], linestyle="--" if key.startswith("eval/") else "-")
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(-0.5, max(k - 0.5, 0.5))  # k = iterations plotted
    if k <= 20:
        ax.set_xticks(range(k))  # whole iterations, also for a single point
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"SPARK co-evolution: {run_dir.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, out)
    return out


@timed("mlflow")
def track_iterations(cfg: SparkConfig, run_dir: str | Path, iterations, data_dir: str | Path | None = None,
                     experiment: str = EXPERIMENT, parent_run_id: str | None = None) -> str:
    """Log the metrics of each given iteration not logged yet (step = iteration), then the
    updated co-evolution plot; returns the MLflow run id. Iterations that a crashed flow run
    completed but never logged are caught up by the next one."""
    from mlflow.entities import Metric

    run_dir = Path(run_dir)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    client = _client(data_dir)
    run_id = _run_id(client, cfg, run_dir, data_dir, experiment, parent_run_id)
    done = {m.step for m in client.get_metric_history(run_id, MARKER)}
    for k in iterations:
        if k in done:
            continue
        now = int(time.time() * 1000)
        metrics = [Metric(metric_name(key), value, now, k) for key, value in sorted(iteration_metrics(run_dir, k).items())]
        metrics.append(Metric(MARKER, float(k), now, k))  # last, in the same batch: written together
        client.log_batch(run_id, metrics=metrics)
    plot = coevolution_plot(run_dir, run_dir / "coevolution.png")
    client.log_artifact(run_id, str(plot))
    return run_id


def experiment_parent(root: Path, name: str, data_dir: str | Path, params: dict) -> str:
    """The parent MLflow run of an experiment (resumed from ROOT/mlflow.json when recorded)."""
    root, data_dir = Path(root), Path(data_dir)
    return _recorded_run(_client(data_dir), root, data_dir, EXPERIMENT_ARMS, name,
                         {"spark.experiment_dir": str(root.resolve())}, params)


def log_summary(run_id: str, metrics: dict, data_dir: str | Path, artifacts: list[Path] = ()) -> None:
    """Final numbers (step 0) and files on an MLflow run."""
    from mlflow.entities import Metric

    client = _client(Path(data_dir))
    now = int(time.time() * 1000)
    ms = [Metric(metric_name(k), float(v), now, 0) for k, v in sorted(metrics.items())
          if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
    if ms:
        client.log_batch(run_id, metrics=ms)
    for a in artifacts:
        client.log_artifact(run_id, str(a))


def child_run(parent_run_id: str, run_dir: Path, data_dir: str | Path) -> str:
    """A nested MLflow run with no iterations (the experiment's `base` arm)."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    tags = {"mlflow.parentRunId": parent_run_id, "spark.run_dir": str(run_dir.resolve())}
    return _recorded_run(_client(data_dir), run_dir, data_dir, EXPERIMENT_ARMS, run_dir.name, tags, {})
