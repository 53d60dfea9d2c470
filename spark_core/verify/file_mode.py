"""`spark verify`: verify every row of a JSONL/Parquet file, keeping going past bad rows.

Each output row is the input row plus `extracted`, `rule`, `correct` and `error`. A bad row
(unreadable line, missing field, null, wrong type, over-long text) gets its `error` and
`correct = null`; the rest of the file is still verified. Only a problem with the file as a
whole (missing, unknown format, a field no row has) stops the command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from spark_core.data.records import InputError, field_names, read_records
from spark_core.data.store import atomic_write_parquet
from spark_core.verify import DEFAULT_TIMEOUT_S, EXTRACT_MODES, number_text, verify_response

#: Longest response or reference verified, in characters; longer ones are a row error.
DEFAULT_MAX_CHARS = 100_000

OUTPUT_COLUMNS = ("extracted", "rule", "correct", "error")


@dataclass
class Summary:
    """Counts over a verified file."""

    rows: int = 0
    correct: int = 0
    wrong: int = 0
    no_answer: int = 0
    errors: int = 0

    def line(self) -> str:
        return (
            f"{self.rows} rows: {self.correct} correct, {self.wrong} wrong "
            f"({self.no_answer} with no answer found), {self.errors} errors"
        )


def _text(row: dict, field: str, max_chars: int, reference: bool) -> tuple[str | None, str | None]:
    """(text, error) for one field of one row."""
    if field not in row:
        return None, f"missing field {field!r}"
    value = row[field]
    if value is None:
        return None, f"field {field!r} is null"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"field {field!r}: invalid UTF-8 at byte {e.start}"
    # A numeric reference is common (AMC stores 27.0); a numeric response is not a response.
    if reference and number_text(value) is not None:
        value = number_text(value)
    if not isinstance(value, str):
        return None, f"field {field!r} must be a string, got {type(value).__name__}"
    if len(value) > max_chars:
        return None, f"field {field!r} is {len(value)} characters, over the limit of {max_chars}"
    return value, None


def _column(values: list[Any]) -> pa.Array:
    """An Arrow column for input values; mixed types become text (strings as they are, other
    values as JSON), so a file with a wrong-typed row still gets written whole."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        text = [v if v is None or isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False) for v in values]
        return pa.array(text, pa.string())


def verify_file(
    path: str | Path,
    response_field: str,
    reference_field: str,
    extract: str = "auto",
    out: str | Path | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Summary:
    """Verify each row's response against its reference; write the result table to `out`."""
    if extract not in EXTRACT_MODES:
        raise InputError(f"unknown --extract {extract!r}; choose one of {', '.join(EXTRACT_MODES)}")
    path = Path(path)
    names = field_names(path)
    for f in (response_field, reference_field):
        if f not in names:
            known = ", ".join(sorted(names)) or "none"
            raise InputError(f"{path}: no row has field {f!r} (fields: {known})")
    clash = [c for c in OUTPUT_COLUMNS if c in names]
    if clash and out is not None:
        raise InputError(f"{path}: input already has column {clash[0]!r}, which the output adds")

    summary = Summary()
    inputs: list[dict] = []
    added = {c: [] for c in OUTPUT_COLUMNS}
    for rec in read_records(path):
        summary.rows += 1
        row = rec.fields or {}
        verdict, error = None, rec.error
        if error is None:
            response, error = _text(row, response_field, max_chars, reference=False)
            reference, ref_error = _text(row, reference_field, max_chars, reference=True)
            error = error or ref_error
        if error is None:
            verdict = verify_response(response, reference, extract, timeout_s)
            error = verdict.error
        if out is not None:
            inputs.append(row)
            added["extracted"].append(verdict.extracted if verdict else None)
            added["rule"].append(verdict.rule if verdict else None)
            added["correct"].append(verdict.correct if verdict else None)
            added["error"].append(error)
        if error is not None:
            summary.errors += 1
        elif verdict.correct:
            summary.correct += 1
        else:
            summary.wrong += 1
            summary.no_answer += verdict.extracted is None
    if out is not None:
        _write(inputs, added, Path(out))
    return summary


def _write(inputs: list[dict], added: dict[str, list], out: Path) -> None:
    names: list[str] = []
    for row in inputs:
        names.extend(k for k in row if k not in names)
    columns = {n: _column([row.get(n) for row in inputs]) for n in names}
    columns["extracted"] = pa.array(added["extracted"], pa.string())
    columns["rule"] = pa.array(added["rule"], pa.string())
    columns["correct"] = pa.array(added["correct"], pa.bool_())
    columns["error"] = pa.array(added["error"], pa.string())
    out = out.resolve()
    atomic_write_parquet(pa.table(columns), out)
