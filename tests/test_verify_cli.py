import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from spark_cli.main import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, list(map(str, args)))


@pytest.fixture
def bad_file(tmp_path):
    """One good row, then each kind of bad row named in the issue."""
    path = tmp_path / "rows.jsonl"
    lines = [
        json.dumps({"resp": "so \\boxed{5}", "ref": "5"}).encode(),
        json.dumps({"ref": "5"}).encode(),  # missing field
        json.dumps({"resp": 5, "ref": "5"}).encode(),  # non-string
        json.dumps({"resp": None, "ref": "5"}).encode(),  # null
        json.dumps({"resp": "x" * (1 << 20) + "\\boxed{5}", "ref": "5"}).encode(),  # 1 MB string
        b'{"resp": "caf\xe9 \\\\boxed{5}", "ref": "5"}',  # invalid UTF-8 (latin-1 byte)
        b"{not json",
        json.dumps({"resp": "I think \\boxed{6}", "ref": "5"}).encode(),
        json.dumps({"resp": "no idea", "ref": "5"}).encode(),
        json.dumps({"resp": "\\boxed{27}", "ref": 27.0}).encode(),  # numeric reference is fine
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_rows_get_errors_and_the_file_goes_on(bad_file, tmp_path):
    out = tmp_path / "out.parquet"
    r = _run("verify", bad_file, "--response-field", "resp", "--reference-field", "ref", "-o", out)
    assert r.exit_code == 0, r.output
    assert "10 rows: 2 correct, 2 wrong (1 with no answer found), 6 errors" in r.output
    t = pq.read_table(out).to_pylist()
    assert len(t) == 10
    errors = [row["error"] for row in t]
    assert errors[0] is None and t[0]["correct"] is True and t[0]["rule"] == "boxed"
    assert errors[1] == "missing field 'resp'"
    assert errors[2] == "field 'resp' must be a string, got int"
    assert errors[3] == "field 'resp' is null"
    assert "over the limit" in errors[4]
    assert errors[5].startswith("line 6: invalid UTF-8")
    assert errors[6].startswith("line 7: invalid JSON")
    assert t[7]["correct"] is False and t[7]["extracted"] == "6"
    assert t[8]["correct"] is False and t[8]["extracted"] is None
    assert t[9]["correct"] is True
    assert all(t[i]["correct"] is None for i in range(1, 7))
    # every input field is kept (mixed types become JSON text rather than failing the write)
    assert t[0]["resp"] == "so \\boxed{5}"


def test_missing_file_and_unknown_field_exit_2(tmp_path, bad_file):
    r = _run("verify", tmp_path / "nope.jsonl", "--response-field", "a", "--reference-field", "b")
    assert r.exit_code == 2 and "no such file" in r.output
    r = _run("verify", bad_file, "--response-field", "answer", "--reference-field", "ref")
    assert r.exit_code == 2 and "no row has field 'answer'" in r.output
    r = _run("verify", bad_file, "--response-field", "resp", "--reference-field", "ref", "--extract", "nope")
    assert r.exit_code == 2 and "unknown --extract" in r.output


def test_parquet_input_and_extract_mode(tmp_path):
    import pyarrow as pa

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"r": ["#### 12", "answer: 3 and 4", None], "g": ["12", "4", "1"]}), src)
    out = tmp_path / "out.parquet"
    r = _run("verify", src, "--response-field", "r", "--reference-field", "g", "--extract", "last-number", "-o", out)
    assert r.exit_code == 0, r.output
    rows = pq.read_table(out).to_pylist()
    assert [x["correct"] for x in rows] == [True, True, None]
    assert [x["rule"] for x in rows] == ["last-number", "last-number", None]


def test_gsm8k_cli_reports_all_correct(benchmarks):
    r = _run("verify", benchmarks / "gsm8k.jsonl", "--response-field", "answer", "--reference-field", "answer")
    assert r.exit_code == 0
    assert r.output.startswith("1319 rows: 1319 correct, 0 wrong")


def test_every_subcommand_has_help():
    r = _run("--help")
    assert r.exit_code == 0
    for cmd in ("verify", "sql", "problems", "prepare", "sample", "bootstrap", "recycle", "iterate"):
        assert cmd in r.output
        sub = _run(cmd, "--help")
        assert sub.exit_code == 0 and "Usage" in sub.output, cmd
