"""Fuzzing the verifier and `spark recycle` (issue 20, item 2): never a crash, never a hang past
the per-comparison time limit, every bad row named.

The time bound below is a hang detector, not a performance claim: the limit is enforced by
killing math-verify's helper process, so a call that returns long after it means the
enforcement failed. The slack covers restarting that helper on a loaded 2-core machine.
"""

import json
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from spark_cli.main import app
from spark_core.data.records import read_records
from spark_core.judge.recycle_file import REQUIRED, recycle_file
from spark_core.verify import Verdict, extract_answer, last_boxed, verify_response
from spark_core.verify.file_mode import verify_file

LIMIT_S = 1.0
SLACK_S = 30.0

ATOMS = [
    "\\boxed{", "{", "}", "\\frac{", "\\dfrac", "^", "^{", "_", "\\sqrt{", "\\sqrt[3]{", "10^{", "9" * 40, "2^{99999999}",
    "10^{10^{10^{10}}}", "9**9**9**9", "1e999999", "-", "+", "=", "\\pi", "e", "i", "\\infty", "\\left(", "\\right)",
    "\\left[", "\\right]", "\\text{", "\\mathrm{", "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\\\", "$", "$$", "\\$",
    "%", ",", ".", "0.", "1/0", "0/0", "x", "\\cdot", "\\times", "\\div", "!", "\\%", "\\,", "\\;", "\\!", "~",
    "١٢٣", "۴۵", "一二三", "ℝ", "½", "²", "−", "×", "\u200b", "\u202e", "\x00", "\ufeff", "😀", "Ω", "ß", "ǅ",
    "\\boxed{\\boxed{", "#### ", "The answer is ", "\\sum_{n=1}^{\\infty}", "\\int_0^1", "\\lim", "\\log", "\\ln",
    "\\sin", "\\binom{", "\\{", "\\}", "\\|", "\\mid", "\\le", "\\ge", "\\ne", "\\approx", "\\pm", "\\mp",
]

latex = st.lists(st.sampled_from(ATOMS) | st.text(max_size=8), max_size=60).map("".join)
nested = st.integers(1, 20_000).flatmap(
    lambda n: st.sampled_from([
        "\\boxed{" + "{" * n + "1" + "}" * n + "}",
        "\\boxed{" + "\\frac{1}{" * n + "2" + "}" * n + "}",
        "\\boxed{" + "(" * n + "3" + ")" * n + "}",
        "\\boxed{" + "{" * n,                       # never closed
        "}" * n + "\\boxed{4}",
        "\\sqrt{" * n + "5" + "}" * n,
    ]))
huge = st.sampled_from(["x" * 1_000_000, "\\boxed{" + "9" * 1_000_000 + "}", "1+" * 300_000 + "1",
                        "\\boxed{" + "\\frac{1}{2}" * 50_000 + "}", "{" * 500_000, "\\boxed{1}" * 100_000])
responses = latex | nested | huge
references = st.sampled_from(["7", "\\frac{1}{2}", "Yes", "B", "10^{100}", "\\sqrt{2}", "x^2+1", "(1, 2)", "1e5",
                              "\\infty", ""]) | latex


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(responses, references)
def test_the_verifier_never_crashes_or_hangs(response, reference):
    start = time.monotonic()
    v = verify_response(response, reference, timeout_s=LIMIT_S)
    took = time.monotonic() - start
    assert isinstance(v, Verdict) and v.correct in (True, False, None)
    assert v.correct is not None or v.error  # an undecided comparison says why
    assert took < LIMIT_S + SLACK_S, f"{took:.1f}s for a {len(response)}-character response"
    extract_answer(response, "gsm8k"), extract_answer(response, "last-number"), last_boxed(response)


def test_a_megabyte_row_is_named_not_verified(tmp_path):
    rows = [{"r": "\\boxed{7}", "a": "7"}, {"r": "1+" * 600_000 + "\\boxed{7}", "a": "7"}, {"r": "\\boxed{8}", "a": "7"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = verify_file(src, "r", "a", "auto", tmp_path / "out.parquet", 100_000, LIMIT_S)
    assert summary.line().startswith("3 rows: 1 correct, 1 wrong") and "1 errors" in summary.line()
    import pyarrow.parquet as pq

    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [o["correct"] for o in out] == [True, None, False]
    assert out[1]["error"] == "field 'r' is 1200009 characters, over the limit of 100000"


# --------------------------------------------------------------------------- spark recycle

scalar = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True) | st.text(max_size=20)
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                           max_size=3), max_leaves=6)


@st.composite
def rollout_row(draw, pid):
    row = {"prompt_id": pid, "question": f"What is {pid}?", "answer": "7",
           "response": draw(st.sampled_from(["\\boxed{7}", "\\boxed{8}", "no idea", "7"]) | latex)}
    if draw(st.booleans()):
        row["correct"] = draw(st.booleans())
    if draw(st.booleans()):
        row["sample_index"] = draw(st.integers(0, 5))
    for field in list(row):  # fields dropped, retyped or set to null
        fault = draw(st.sampled_from(["keep"] * 6 + ["drop", "null", "retype"]))
        if fault == "drop":
            del row[field]
        elif fault == "null":
            row[field] = None
        elif fault == "retype":
            row[field] = draw(value)
    return row


@st.composite
def jsonl_lines(draw):
    """Groups of any size (1 to 12 rows a prompt, prompt ids repeated across groups), with
    malformed rows: missing, null or retyped fields, duplicated keys, broken JSON, deep nesting."""
    lines = []
    for g in range(draw(st.integers(1, 6))):
        pid = draw(st.sampled_from([f"p{g}", g, "dup"]))
        for _ in range(draw(st.integers(1, 12))):
            kind = draw(st.sampled_from(["row"] * 8 + ["dupkey", "broken", "deep", "array", "blank", "bytes"]))
            row = draw(rollout_row(pid))
            text = json.dumps(row)
            if kind == "dupkey" and text != "{}":
                text = text[:-1] + (", " if len(text) > 2 else "") + '"response": "\\\\boxed{7}"}'
            elif kind == "broken":
                text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
            elif kind == "deep":
                text = '{"prompt_id": ' + "[" * 100_000 + "]" * 100_000 + "}"
            elif kind == "array":
                text = json.dumps([row])
            elif kind == "blank":
                text = "   "
            elif kind == "bytes":
                text = text.replace("What", "Wh\udcffat")
            lines.append(text)
    return lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.function_scoped_fixture])
@given(jsonl_lines(), st.booleans())
def test_recycle_never_crashes_and_names_every_bad_row(tmp_path, lines, balanced):
    src, out = tmp_path / "rollouts.jsonl", tmp_path / "judge.parquet"
    src.write_bytes(b"".join(line.encode("utf-8", "surrogateescape") + b"\n" for line in lines))
    r = CliRunner().invoke(app, ["recycle", str(src), "-o", str(out), "--reference-field", "answer"]
                           + (["--balance-labels"] if balanced else []))
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    if r.exit_code != 0:  # only when no row at all has a required field: one line naming it
        assert r.exit_code == 2 and "no row has field" in r.output and r.output.strip().count("\n") == 0, r.output
        return
    report = recycle_file(src, out, "answer", balance_labels=balanced)
    records = list(read_records(src))
    good = [rec for rec in records if rec.error is None and all(
        rec.fields.get(f) is not None for f in REQUIRED + ("answer",))]
    assert report.rows_read == len(records)
    assert len(report.bad_rows) >= len(records) - len(good)
    assert all(msg.startswith("line ") for msg in report.bad_rows)  # every bad row is named by its line
    named = {int(msg.split()[1].rstrip(":")) for msg in report.bad_rows}
    assert {rec.number for rec in records if rec.error is not None} <= named
    import pyarrow.parquet as pq

    made = pq.read_table(out)
    assert made.num_rows == len(report.result.rows)
    pids = {str(rec.fields["prompt_id"]) for rec in good if isinstance(rec.fields.get("prompt_id"), (str, int))}
    assert set(made.column("source_prompt_id").to_pylist()) <= pids


def test_duplicate_keys_and_deep_nesting_are_row_errors(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text('{"prompt_id": "a", "question": "q", "response": "\\\\boxed{1}", "response": "\\\\boxed{2}"}\n'
                   + '{"prompt_id": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
                   + '{"prompt_id": "a", "question": "q", "response": "\\\\boxed{1}", "answer": "1"}\n')
    errors = [rec.error for rec in read_records(src)]
    assert errors[0] == "line 1: duplicate field 'response'"
    assert errors[1].startswith("line 2: JSON nested too deeply")
    assert errors[2] is None
