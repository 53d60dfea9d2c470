"""A run folder: its layout (checkpoints, side files), the config hashes that key its stages,
the stage runner (skip a complete stage, the fault hook, the manifest), checkpoint retention, and
the binding of a run to its config. Every stage module builds on this; nothing here samples or
trains."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from spark_core import REPO
from spark_core import progress
from spark_core.model.checkpoint import CheckpointError, check_model_dir
from spark_core.config import SparkConfig, config_hash, stable_resolved
from spark_core.data.problems import Problem
from spark_core.data.records import InputError
from spark_core.model.rollout import make_engine
from spark_core.data.store import (
    atomic_write_bytes, checkpoint_problem, read_manifest, read_table, stage_complete, write_error, write_manifest,
)
from spark_core.timing import timed

log = logging.getLogger(__name__)


#: The chain of one iteration, defined once: (step, phase or None) in order. `spark iterate`
#: (spark_core/iteration.py), the Prefect flow (flows/spark_flow.py) and the tests walk it.
CHAIN = (("warmup", None), ("rollout", "policy"), ("verify", "policy"), ("train", "policy"), ("recycle", None),
         ("rollout", "reward"), ("verify", "reward"), ("train", "reward"), ("evaluate", None))


def stage_name(step: str, phase: str | None) -> str:
    """The manifest name of a step of the chain: `rollout_policy`, `recycle`, ..."""
    return f"{step}_{phase}" if phase else step


STAGES = tuple(stage_name(step, phase) for step, phase in CHAIN)
DONE = "iteration"  # the manifest that closes an iteration
#: How each stage's metrics are named in the `iteration` manifest and in MLflow.
METRIC_PREFIX = {"warmup": "warmup/", "rollout_policy": "policy/", "verify_policy": "policy/", "train_policy": "policy/train_",
                 "recycle": "recycle/", "rollout_reward": "reward/", "verify_reward": "reward/",
                 "train_reward": "reward/train_", "evaluate": "eval/"}
#: Test hook: a stage named here kills its own process (SIGKILL) after writing its outputs and
#: before its manifest, the worst moment to die. Used by the restart tests; never set it otherwise.
FAULT_ENV = "SPARK_FAULT_STAGE"


def checkpoint_dir(run_dir: Path, iteration: int, phase: str = "reward") -> Path:
    """Where iteration k's checkpoint lives: after the reward period (the iteration's result),
    or after its policy period (`phase="policy"`, intermediate)."""
    name = f"iteration={iteration}" + ("" if phase == "reward" else f".{phase}")
    return Path(run_dir) / "checkpoints" / name


def samples_path(run_dir: Path, iteration: int, phase: str) -> Path:
    return Path(run_dir) / "samples" / f"iteration={iteration}" / f"{phase}.parquet"


def iteration_hash(cfg: SparkConfig) -> str:
    """What the training stages depend on: the config less the bootstrap recipe, the evaluation
    settings, the number of iterations per flow run, checkpoint retention, where shards run
    (`runner`, `ray`) and `train.packing` (changing those must not redo training; the shard
    count stays in: it decides the sampling seeds)."""
    data = stable_resolved(cfg)
    for key in ("bootstrap", "eval", "iterations", "checkpoints", "runner", "ray"):
        data.pop(key, None)
    # Packing lays out the same sequences differently (the loss is equal up to rounding): a
    # run may switch it on or off, and runs made before the option existed keep their hash.
    data["train"].pop("packing")
    data["train"].pop("processes", None)  # placement: the update is the same (up to rounding, tested)
    data["train"].pop("fsdp", None)
    return config_hash(data)


def eval_hash(cfg: SparkConfig) -> str:
    return config_hash([iteration_hash(cfg), cfg.eval.model_dump(mode="json")])


def resolve_path(path: str | Path) -> Path:
    """A relative path (model, config) is taken from the working directory, else from the repository root."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return REPO / path


def base_model(cfg: SparkConfig) -> Path:
    return resolve_path(cfg.model.path)


def completed_iterations(run_dir: Path, cfg: SparkConfig) -> int:
    """How many iterations, from 0, are complete for this config."""
    k = 0
    while stage_complete(run_dir, DONE, k, iteration_hash(cfg)):
        k += 1
    return k


def problems_of(run_dir: Path, split: str) -> list[Problem]:
    """The run's `problems` table rows of one split (`train` | `held_out`) as Problems."""
    return [Problem(p["id"], p["question"], p["answer"], p["solution"], p["source"])
            for p in read_table(run_dir, "problems").to_pylist() if p["split"] == split]


def policy_problems(cfg: SparkConfig, train: list[Problem], k: int) -> list[Problem]:
    """The B training problems of iteration k's policy period: a draw seeded by (seed, k), so every
    arm of an experiment (and a resumed run) sees the same problems in the same order."""
    return random.Random(f"{cfg.seed}|iteration|{k}").sample(train, min(cfg.rollout.batch_prompts, len(train)))


@contextmanager
def open_engine(cfg: SparkConfig, checkpoint: Path, seed: int) -> Iterator:
    """The configured rollout engine on a checkpoint, closed (GPU memory freed) on the way out."""
    r = cfg.rollout
    extra = dict(python=r.vllm_python, compile=r.vllm_compile) if r.engine == "vllm" else {}
    engine = make_engine(r.engine, checkpoint, device=r.device, dtype=r.dtype, seed=seed, system=cfg.prompts.system,
                         **extra)
    try:
        yield engine
    finally:
        engine.close()


def warmup_dir(run_dir: Path) -> Path:
    """Where a run made before warm-ups were shared keeps its format warm-up checkpoint (newer runs
    name the shared one in their warmup manifest; `start_model` finds either)."""
    return Path(run_dir) / "checkpoints" / "warmup"


def start_model(cfg: SparkConfig, run_dir: Path) -> Path:
    """The model RL starts from and is anchored to (KL reference, judge-set and ablation rollouts):
    the warm-up checkpoint when the warm-up is on, else the configured base model."""
    if cfg.warmup.enabled:
        doc = read_manifest(run_dir, "warmup", 0)
        # The shared warm-up the manifest names; a run made before warm-ups were shared has its own.
        path = Path(doc["shared"]) if doc and doc.get("shared") else warmup_dir(run_dir)
        if doc is None or not path.is_dir():
            raise FileNotFoundError(f"{path}: the warm-up checkpoint is missing; the warmup stage must run first "
                                    f"(delete {Path(run_dir) / 'manifests'} for iteration 0 to redo it)")
        return path
    return check_model_dir(base_model(cfg))  # one-line CheckpointError when it is missing


def phase_start_model(cfg: SparkConfig, run_dir: Path, k: int, phase: str) -> Path:
    """The checkpoint a phase of iteration k starts from."""
    if phase == "reward":
        path = checkpoint_dir(run_dir, k, "policy")
    elif k == 0:
        return start_model(cfg, run_dir)
    else:
        path = checkpoint_dir(run_dir, k - 1)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint missing; the stage that writes it must run first "
                                f"(delete {Path(run_dir) / 'manifests'} for iteration {k} to redo it)")
    problem = checkpoint_problem(path)
    if problem is not None:  # damaged after its iteration closed: nothing left here can rebuild it
        raise CheckpointError(f"{path}: {problem}; iteration {k} starts from it and the iteration that wrote it "
                              f"is closed: restore the folder, or start a new run from an intact checkpoint")
    return path


def fault(stage: str) -> None:
    if os.environ.get(FAULT_ENV) == stage:
        log.warning("%s=%s: killing this process inside the stage", FAULT_ENV, stage)
        os.kill(os.getpid(), signal.SIGKILL)


def run_stage(cfg: SparkConfig, run_dir: Path, stage: str, k: int, key: str, body: Callable[[], dict]) -> dict:
    """Skip a complete stage; otherwise run `body` (which writes its outputs and returns the
    manifest's fields), hit the fault hook, write the manifest."""
    run_dir = Path(run_dir)
    if stage_complete(run_dir, stage, k, key):
        progress.log.info("iteration %d %s: complete, skipped", k, stage)
        return read_manifest(run_dir, stage, k)
    start = time.monotonic()
    with progress.stage(f"iteration {k} {stage}"):
        doc = timed("stage")(body)()
    fault(stage)
    write_manifest(run_dir, stage, k, key, outputs=doc.pop("outputs", {}), rows=doc.pop("rows", {}),
                   inputs=doc.pop("inputs", {}), seconds=time.monotonic() - start, extra=doc)
    return read_manifest(run_dir, stage, k)


def replace_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Write a directory beside `out`, then put it in place: a kill leaves the old one or none."""
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except OSError as e:  # a full disk: the partial copy goes, the old directory stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(out, e) from e
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def retired_checkpoints(cfg: SparkConfig, run_dir: Path, k: int) -> list[Path]:
    """The checkpoint folders closing iteration k removes: every intermediate policy checkpoint
    (a killed earlier close may have left some behind), and the iteration checkpoints older
    than the newest `keep_last` that are not every `keep_every`-th (the warm-up's is kept)."""
    c = cfg.checkpoints
    policy = [checkpoint_dir(run_dir, old, "policy") for old in range(k, -1, -1)]
    kept = lambda old: old > k - c.keep_last or (c.keep_every and (old + 1) % c.keep_every == 0)  # noqa: E731
    done = [checkpoint_dir(run_dir, old) for old in range(k, -1, -1) if not kept(old)]
    return [p for p in policy + done if p.exists()]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def disk_use(run_dir: Path, doomed: list[Path] = ()) -> dict:
    """Bytes on disk of the run and its parts, as they will be once `doomed` is removed."""
    gone = sum(_size(p) for p in doomed)
    ckpt = run_dir / "checkpoints"
    out = {"run_bytes": _size(run_dir) - gone, "checkpoints_bytes": (_size(ckpt) if ckpt.exists() else 0) - gone}
    for part in ("tables", "samples"):
        out[f"{part}_bytes"] = _size(run_dir / part) if (run_dir / part).exists() else 0
    return out


def kept_checkpoints(run_dir: Path, doomed: list[Path] = ()) -> list[str]:
    ckpt = run_dir / "checkpoints"
    return sorted(p.name for p in ckpt.iterdir()
                  if p.is_dir() and p not in doomed and not p.name.endswith((".tmp", ".old"))) if ckpt.exists() else []


def claim_run(cfg: SparkConfig, run_dir: Path) -> None:
    """Bind a run directory to its config on first use; refuse a different config later.

    Without this, a changed config would silently redo iteration 0 over the tables of the
    old one. Changing only what `iteration_hash` leaves out (evaluation, iterations per flow
    run, the bootstrap recipe) is allowed.
    """
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    key = iteration_hash(cfg)
    if path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("config_hash") != key:
            raise InputError(f"{run_dir}: this run was made with another config (hash {doc.get('config_hash')}, "
                             f"this one {key}; the old one is in {path}); use a new run name")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps({"config_hash": key, "config": cfg.resolved()}, indent=2) + "\n").encode(), run_dir)
