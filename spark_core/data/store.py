"""The run's tables: typed Parquet files, hive-partitioned by iteration, read through DuckDB.

Layout of a run directory::

    RUN/tables/<table>/iteration=<k>/<part>.parquet   (problems: RUN/tables/problems/<part>.parquet)
    RUN/manifests/<stage>.json, RUN/manifests/iteration=<k>/<stage>.json
    RUN/.staging/                                     (half-written files; never read)

A write goes to `.staging/` (outside every table root), is flushed to disk, then renamed
into place: a reader sees the old file or the new one, never half of one, and a re-run of a
stage replaces its part instead of adding a duplicate. The `iteration` column comes from the
partition path, not from the files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from spark_core.timing import timed

# --------------------------------------------------------------------------- schemas

_S, _I32, _I64, _F64, _B = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_()


def _schema(*fields: tuple) -> pa.Schema:
    """Fields as (name, type) or (name, type, nullable); not nullable unless said."""
    return pa.schema([pa.field(f[0], f[1], nullable=f[2] if len(f) > 2 else False) for f in fields])


SCHEMAS: dict[str, pa.Schema] = {
    # The training and held-out problems, as loaded or generated.
    "problems": _schema(
        ("id", _S), ("question", _S), ("answer", _S), ("solution", _S, True), ("source", _S), ("split", _S)
    ),
    # One row per sampled response, policy and reward phases alike.
    "rollouts": _schema(
        ("run", _S), ("phase", _S), ("prompt_id", _S), ("sample_index", _I32), ("kind", _S),
        ("prompt", _S), ("response", _S), ("extracted", _S, True), ("rule", _S, True),
        ("label", _S), ("correct", _B, True), ("reward", _F64), ("advantage", _F64, True),
        ("prompt_tokens", _I32), ("response_tokens", _I32), ("finish_reason", _S),
        # `spark.judge_reward: expected` only: P(right verdict | trace), the verdict's token index
        # in the response, and the advantage of that token and those after it (`advantage` is
        # then the trace tokens').
        ("expected_reward", _F64, True), ("verdict_index", _I32, True), ("verdict_advantage", _F64, True),
    ),
    # One row per recycled judge or reflection prompt (partition = iteration made).
    "judge_data": _schema(
        ("judge_id", _S), ("kind", _S), ("source_prompt_id", _S), ("source_sample_ids", pa.list_(_I32)),
        ("template_id", _S), ("judge_input", _S), ("prompt", _S), ("label", _S),
        ("candidate_correct", _B, True), ("iteration_consumed", _I32, True),
    ),
    # One row per optimizer step.
    "updates": _schema(
        ("phase", _S), ("step", _I64), ("loss", _F64), ("policy_loss", _F64), ("kl", _F64),
        ("entropy", _F64), ("clip_frac_low", _F64), ("clip_frac_high", _F64), ("grad_norm", _F64),
        ("lr", _F64), ("tokens", _I64), ("seconds", _F64), ("skipped", _B),
    ),
    # Evaluation results, long format: one row per (benchmark, metric).
    "evals": _schema(("benchmark", _S), ("metric", _S), ("value", _F64, True), ("n", _I64)),
}

#: Tables stored without an iteration partition.
UNPARTITIONED = frozenset({"problems"})

DUCKDB_TYPES = {
    pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.list_(pa.int32()): "INTEGER[]",
}


log = logging.getLogger(__name__)


class StoreError(ValueError):
    """A table write that does not match its schema, a bad table name, or an unreadable part."""


def _check_name(table: str) -> pa.Schema:
    if table not in SCHEMAS:
        raise StoreError(f"unknown table {table!r}; known: {', '.join(SCHEMAS)}")
    return SCHEMAS[table]


def validate(table: str, rows: pa.Table | Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as a pa.Table of the table's schema, or StoreError naming the column (and row)."""
    schema = _check_name(table)
    if not isinstance(rows, pa.Table):
        rows = list(rows)
        extra = sorted({k for r in rows for k in r} - set(schema.names))
        if extra:
            raise StoreError(f"{table}: unknown column {extra[0]!r}")
        columns = {}
        for field in schema:
            values = [r.get(field.name) for r in rows]
            try:
                columns[field.name] = pa.array(values, type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
                bad = next((i for i, v in enumerate(values) if not _fits(v, field.type)), None)
                at = f" row {bad}" if bad is not None else ""
                raise StoreError(f"{table}:{at} column {field.name!r}: {e}") from e
        rows = pa.table(columns)
    extra = sorted(set(rows.column_names) - set(schema.names))
    if extra:
        raise StoreError(f"{table}: unknown column {extra[0]!r}")
    for field in schema:
        if field.name not in rows.column_names:
            if not field.nullable:
                raise StoreError(f"{table}: missing column {field.name!r}")
            rows = rows.append_column(field.name, pa.nulls(rows.num_rows, field.type))
    rows = rows.select(schema.names)
    for field in schema:
        col = rows.column(field.name)
        if not field.nullable and col.null_count:
            bad = next(i for i, v in enumerate(col.to_pylist()) if v is None)
            raise StoreError(f"{table}: row {bad} column {field.name!r}: null in a required column")
    try:
        return rows.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise StoreError(f"{table}: {e}") from e


def _fits(value: Any, typ: pa.DataType) -> bool:
    try:
        pa.array([value], type=typ)
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_dir(run_dir: Path) -> Path:
    path = Path(run_dir) / ".staging"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_error(path: Path, e: OSError) -> OSError:
    """A failed write (full disk, read-only file system, ...) as one line naming the file it was for."""
    why = e.strerror or str(e).splitlines()[0]
    return OSError(e.errno, f"cannot write ({why}); what the run had written before is as it was: "
                            f"re-run once the fault is cleared", str(path))


def atomic_write_bytes(path: Path, data: bytes, run_dir: Path | None = None) -> None:
    """Write `data` to `path` through a staged temp file and a rename."""
    path = Path(path)
    tmp = (staging_dir(run_dir) if run_dir else path.parent) / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from e
    _fsync_dir(path.parent)


def atomic_write_parquet(table: pa.Table, path: Path, stage_in: Path | None = None) -> None:
    """Write a Parquet file through a temp file in `stage_in` (default: beside it, hidden),
    which must be on the same file system and outside every reader's glob."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage_in = Path(stage_in) if stage_in is not None else path.parent
    stage_in.mkdir(parents=True, exist_ok=True)
    tmp = stage_in / f".{path.stem}.{uuid.uuid4().hex}.parquet.tmp"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # pyarrow's I/O errors are OSErrors too
        raise write_error(path, e) from e
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def clean_staging(run_dir: Path) -> int:
    """Remove leftovers of writes that were killed midway; returns how many were removed."""
    stage = Path(run_dir) / ".staging"
    if not stage.is_dir():
        return 0
    n = sum(1 for _ in stage.iterdir())
    shutil.rmtree(stage)
    return n


# --------------------------------------------------------------------------- tables


def table_root(run_dir: Path, table: str) -> Path:
    _check_name(table)
    return Path(run_dir) / "tables" / table


def part_path(run_dir: Path, table: str, iteration: int | None, part: str) -> Path:
    """Where one part of a table lives; `part` names the writer (e.g. the stage)."""
    if not part or "/" in part or part.startswith("."):
        raise StoreError(f"bad part name {part!r}")
    root = table_root(run_dir, table)
    if table in UNPARTITIONED:
        if iteration is not None:
            raise StoreError(f"{table} is not partitioned by iteration")
        return root / f"{part}.parquet"
    if iteration is None or iteration < 0:
        raise StoreError(f"{table} needs an iteration >= 0, got {iteration!r}")
    return root / f"iteration={iteration}" / f"{part}.parquet"


@timed("parquet")
def write_table(
    run_dir: Path, table: str, rows: pa.Table | Iterable[dict], iteration: int | None = None, part: str = "part"
) -> Path:
    """Validate `rows` against the schema and write them atomically as one part.

    Writing the same (table, iteration, part) again replaces that part: re-running a stage
    never duplicates its rows.
    """
    data = validate(table, rows)
    path = part_path(run_dir, table, iteration, part)
    atomic_write_parquet(data, path, staging_dir(run_dir))
    return path


@timed("parquet")
def read_table(run_dir: Path, table: str) -> pa.Table:
    """Every part of a table (with its `iteration` column when partitioned); empty if none."""
    schema = _check_name(table)
    files = sorted(table_root(run_dir, table).rglob("*.parquet"))
    if table not in UNPARTITIONED:
        schema = schema.append(pa.field("iteration", pa.int32(), nullable=False))
    if not files:
        return schema.empty_table()
    parts = []
    for f in files:
        try:
            t = pq.read_table(f)
        except (pa.ArrowException, OSError) as e:
            raise StoreError(f"{f}: {parquet_problem(f) or 'unreadable'} ({str(e).splitlines()[0]}); "
                             f"{_owner_hint(run_dir, f)}") from e
        if table not in UNPARTITIONED:
            k = int(f.parent.name.split("=", 1)[1])
            t = t.append_column("iteration", pa.array([k] * t.num_rows, pa.int32()))
        parts.append(t.cast(schema))
    return pa.concat_tables(parts)


# --------------------------------------------------------------------------- manifests


def manifest_path(run_dir: Path, stage: str, iteration: int | None) -> Path:
    base = Path(run_dir) / "manifests"
    return (base if iteration is None else base / f"iteration={iteration}") / f"{stage}.json"


@timed("manifests")
def write_manifest(
    run_dir: Path,
    stage: str,
    iteration: int | None,
    config_hash: str,
    outputs: dict[str, Path],
    rows: dict[str, int],
    inputs: dict[str, str] | None = None,
    seconds: float | None = None,
    extra: dict | None = None,
) -> Path:
    """Record that a stage finished: what it read, wrote (with row counts) and under which config."""
    run_dir = Path(run_dir)
    doc = {
        "stage": stage,
        "iteration": iteration,
        "config_hash": config_hash,
        "inputs": inputs or {},
        "outputs": {k: str(Path(v).resolve().relative_to(run_dir.resolve())) for k, v in outputs.items()},
        "rows": rows,
        "seconds": seconds,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    path = manifest_path(run_dir, stage, iteration)
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), run_dir)
    return path


@timed("manifests")
def read_manifest(run_dir: Path, stage: str, iteration: int | None) -> dict | None:
    path = manifest_path(run_dir, stage, iteration)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        log.warning("%s: not a JSON manifest (corrupted); stage %s is treated as not done and redone", path, stage)
        return None
    return doc


#: What a Hugging Face checkpoint folder needs besides config.json: one of these weight files.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def parquet_problem(path: Path) -> str | None:
    """Why a Parquet file cannot be read (its footer checked: a truncated write fails here), or None."""
    try:
        pq.read_metadata(path)
    except (pa.ArrowException, OSError) as e:
        return f"not a readable Parquet file (truncated or corrupted: {str(e).splitlines()[0]})"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder is incomplete (missing config or weights, a truncated index), or None."""
    from spark_core.model.lora import adapter_problem, is_adapter_dir

    path = Path(path)
    if not path.is_dir():
        return "missing"
    if is_adapter_dir(path):
        return adapter_problem(path)
    if not (path / "config.json").is_file():
        return "incomplete checkpoint: no config.json"
    present = [w for w in WEIGHT_FILES if (path / w).is_file()]
    if not present:
        return f"incomplete checkpoint: no weights ({' or '.join(WEIGHT_FILES[:1] + WEIGHT_FILES[2:3])})"
    if present[0].endswith(".index.json"):
        try:
            shards = set(json.loads((path / present[0]).read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            return f"incomplete checkpoint: {present[0]} is not a valid index"
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            return f"incomplete checkpoint: weight shard {missing[0]} is missing"
    return None


def output_problem(path: Path) -> str | None:
    """Why a stage output is unusable (missing, an unreadable Parquet file, an incomplete checkpoint), or None."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.suffix == ".parquet":
        return parquet_problem(path)
    if path.is_dir() and path.parent.name == "checkpoints":
        return checkpoint_problem(path)
    return None


def _owner_hint(run_dir: Path, path: Path) -> str:
    """Which stage wrote `path` (from the manifests) and how to have it redone."""
    run_dir = Path(run_dir)
    rel = str(Path(path).resolve().relative_to(run_dir.resolve()))
    for m in sorted((run_dir / "manifests").rglob("*.json")):
        try:
            doc = json.loads(m.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict) and rel in doc.get("outputs", {}).values():
            return (f"it was written by stage {doc.get('stage')} of iteration {doc.get('iteration')} "
                    f"({m}); restore the file, or start a new run from the last good checkpoint")
    return "no manifest names it as an output; restore or remove it"


@timed("manifests")
def stage_complete(run_dir: Path, stage: str, iteration: int | None, config_hash: str) -> bool:
    """True when the stage's manifest exists, matches `config_hash`, and its outputs are usable:
    each exists, a Parquet output's footer reads, a checkpoint it wrote has its weights. A damaged
    output is logged (naming the file) and makes the stage not done, so a re-run redoes it."""
    doc = read_manifest(run_dir, stage, iteration)
    if doc is None or doc.get("config_hash") != config_hash:
        return False
    paths = [Path(run_dir) / p for p in doc.get("outputs", {}).values()]
    if doc.get("checkpoint"):  # a train stage's checkpoint (not an output: retention may remove it later);
        # found by its name under this run, wherever the run was reached from when it was written
        paths.append(Path(run_dir) / "checkpoints" / Path(doc["checkpoint"]).name)
    for path in paths:
        problem = output_problem(path)
        if problem is not None:
            if problem != "missing":
                log.warning("%s: %s; stage %s of iteration %s is redone", path, problem, stage, iteration)
            return False
    return True
