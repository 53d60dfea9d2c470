"""`spark recycle`: build judge data from any rollouts file (JSONL or Parquet).

Columns: `prompt_id` (string or integer), `question`, `response`, the reference answer
(`--reference-field`, default `answer`), and optionally `correct` (bool) and `sample_index`;
rows without `correct` are verified with the project's verifier. A malformed row (missing
field, empty response, a prompt_id that is neither string nor integer, ...) is reported with
its line and left out; the rest is recycled and written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from spark_core.data.records import InputError, field_names, read_records
from spark_core.judge.recycle import RecycleResult, Rollout, recycle
from spark_core.data.store import SCHEMAS, atomic_write_parquet
from spark_core.judge.templates import JUDGE_INPUTS, TEMPLATE_SETS
from spark_core.verify import extract_answer, number_text, verify_response

REQUIRED = ("prompt_id", "question", "response")


@dataclass
class RecycleReport:
    result: RecycleResult
    rows_read: int = 0
    bad_rows: list[str] = field(default_factory=list)
    groups: int = 0

    def lines(self) -> list[str]:
        r = self.result
        out = [f"{self.rows_read} rollouts in {self.groups} groups; {len(self.bad_rows)} malformed rows left out"]
        out += [f"  bad row: {msg}" for msg in self.bad_rows[:10]]
        if len(self.bad_rows) > 10:
            out.append(f"  ... and {len(self.bad_rows) - 10} more")
        out.append("made: " + (", ".join(f"{k} {v}" for k, v in sorted(r.made.items())) or "nothing"))
        out.append("dropped: " + (", ".join(f"{k}: {v}" for k, v in sorted(r.dropped.items())) or "nothing"))
        return out


def _row_rollout(rec, reference_field: str, extract: str) -> tuple[dict | None, str | None]:
    row = rec.fields
    for f in REQUIRED + (reference_field,):
        if f not in row or row[f] is None:
            return None, f"line {rec.number}: missing field {f!r}"
    pid = row["prompt_id"]
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        return None, f"line {rec.number}: prompt_id must be a string or an integer, got {type(pid).__name__}"
    if not isinstance(row["response"], str) or not row["response"].strip():
        return None, f"line {rec.number}: empty response"
    if not isinstance(row["question"], str) or not row["question"].strip():
        return None, f"line {rec.number}: empty question"
    ref = row[reference_field]
    ref = number_text(ref) or ref
    if not isinstance(ref, str) or not ref.strip():
        return None, f"line {rec.number}: field {reference_field!r} must be a non-empty string or number"
    correct = row.get("correct")
    extracted = extract_answer(row["response"], extract).answer
    if correct is None:
        verdict = verify_response(row["response"], ref, extract)
        if verdict.correct is None:
            return None, f"line {rec.number}: cannot verify ({verdict.error})"
        correct = verdict.correct
    elif not isinstance(correct, bool):
        return None, f"line {rec.number}: correct must be true, false or absent"
    return dict(prompt_id=str(pid), question=row["question"], reference=ref, response=row["response"],
                extracted=extracted, correct=correct, sample_index=row.get("sample_index")), None


def recycle_file(
    path: str | Path,
    out: str | Path,
    reference_field: str = "answer",
    seed: int = 0,
    template_set: str = "compact",
    judge_input: str = "answer",
    balance_labels: bool = False,
    extract: str = "auto",
) -> RecycleReport:
    """Read, verify where needed, recycle and write the judge rows to `out` (Parquet)."""
    if template_set not in TEMPLATE_SETS:
        raise InputError(f"unknown template set {template_set!r}; choose one of {', '.join(TEMPLATE_SETS)}")
    if judge_input not in JUDGE_INPUTS:
        raise InputError(f"unknown judge input {judge_input!r}; choose one of {', '.join(JUDGE_INPUTS)}")
    path = Path(path)
    names = field_names(path)
    missing = [f for f in REQUIRED + (reference_field,) if f not in names]
    if missing:
        raise InputError(f"{path}: no row has field {missing[0]!r} (fields: {', '.join(sorted(names)) or 'none'})")
    report = RecycleReport(RecycleResult())
    groups: dict[str, list[dict]] = {}
    for rec in read_records(path):
        report.rows_read += 1
        if rec.error:
            report.bad_rows.append(rec.error)
            continue
        r, err = _row_rollout(rec, reference_field, extract)
        if err:
            report.bad_rows.append(err)
            continue
        groups.setdefault(r["prompt_id"], []).append(r)
    rollouts = []
    for pid, rows in groups.items():
        rollouts.append([
            Rollout(pid, rows[0]["question"], rows[0]["reference"],
                    r["sample_index"] if isinstance(r["sample_index"], int) else i, r["response"], r["extracted"], r["correct"])
            for i, r in enumerate(rows)
        ])
    report.groups = len(rollouts)
    report.result = recycle(rollouts, seed, template_set, judge_input, balance_labels=balance_labels)
    table = pa.Table.from_pylist([row.to_row() for row in report.result.rows], schema=SCHEMAS["judge_data"])
    atomic_write_parquet(table, Path(out).resolve())
    return report
