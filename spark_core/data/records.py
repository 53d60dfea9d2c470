"""Reading JSONL and Parquet files row by row, with a per-row error instead of a crash.

`read_records` is shared by the verifier CLI (which must keep going past a bad row) and the
problem loaders (which stop at the first bad row with a `file:line` message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet")


class InputError(ValueError):
    """An input file that cannot be used at all (missing, unknown format, unknown field)."""


@dataclass(frozen=True)
class Record:
    """One input row: its 1-based line (JSONL) or row (Parquet) number, its fields, or why not."""

    number: int
    fields: dict[str, Any] | None
    error: str | None = None


def file_format(path: Path) -> str:
    """'jsonl' or 'parquet' from the file suffix; InputError otherwise."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise InputError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


class _DuplicateField(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a key given twice (json.loads would silently keep the last)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateField(k)
        out[k] = v
    return out


def read_records(path: str | Path) -> Iterator[Record]:
    """Yield every row of a JSONL or Parquet file; an unreadable row carries its error.

    JSONL is read as bytes and decoded line by line, so invalid UTF-8 or invalid JSON on
    one line is that line's error, not the file's (a key given twice, or nesting too deep for
    the parser, too). Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if file_format(path) == "parquet":
        yield from _read_parquet(path)
        return
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Record(number, None, f"line {number}: invalid UTF-8 at byte {e.start}")
                continue
            try:
                value = json.loads(line, object_pairs_hook=_no_duplicates)
            except json.JSONDecodeError as e:
                yield Record(number, None, f"line {number}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            except _DuplicateField as e:
                yield Record(number, None, f"line {number}: duplicate field {e.args[0]!r}")
                continue
            except RecursionError:
                yield Record(number, None, f"line {number}: JSON nested too deeply ({len(line)} characters)")
                continue
            if not isinstance(value, dict):
                yield Record(number, None, f"line {number}: expected a JSON object, got {type(value).__name__}")
                continue
            yield Record(number, value)


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from e
    number = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield Record(number, row)


def field_names(path: str | Path) -> set[str]:
    """The field names of a file: its Parquet schema, or every key seen in its JSONL rows."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        try:
            return set(pq.read_schema(path).names)
        except Exception as e:
            raise InputError(f"{path}: not a readable Parquet file ({e})") from e
    names: set[str] = set()
    for rec in read_records(path):
        if rec.fields:
            names.update(rec.fields)
    return names
