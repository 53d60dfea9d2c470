import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from spark_cli.main import app


def test_recycle_cli_reports_malformed_rows_and_writes_the_rest(tmp_path):
    rows = []
    for g in range(6):
        for i in range(4):
            ok = (g + i) % 3 != 0
            rows.append({"prompt_id": f"p{g}" if g % 2 else g, "question": f"{g}+1", "answer": str(g + 1),
                         "response": f"{g}+1={g + 1 if ok else g + 7}. \\boxed{{{g + 1 if ok else g + 7}}}"})
    rows[0]["correct"] = True  # a given verdict is used as is (this one is right anyway)
    bad = [
        {"prompt_id": "x1", "question": "1+1", "response": "\\boxed{2}"},  # missing answer
        {"prompt_id": "x2", "question": "1+1", "answer": "2", "response": "   "},  # empty response
        {"prompt_id": [1], "question": "1+1", "answer": "2", "response": "\\boxed{2}"},  # unknown prompt_id type
        {"prompt_id": 1.5, "question": "1+1", "answer": "2", "response": "\\boxed{2}"},
    ]
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows + bad) + "{broken\n")
    out = tmp_path / "judge.parquet"
    r = CliRunner().invoke(app, ["recycle", str(src), "-o", str(out), "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "29 rollouts in 6 groups; 5 malformed rows left out" in r.output
    assert "line 25: missing field 'answer'" in r.output
    assert "line 26: empty response" in r.output
    assert "line 27: prompt_id must be a string or an integer, got list" in r.output
    assert "line 28: prompt_id must be a string or an integer, got float" in r.output
    assert "line 29: invalid JSON" in r.output
    assert "made: " in r.output and "reflection" in r.output
    t = pq.read_table(out)
    assert t.num_rows > 0 and "label" in t.column_names
    assert set(t.column("kind").to_pylist()) <= {"pointwise", "pairwise", "reflection"}


def test_recycle_cli_bad_options_exit_2(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps({"prompt_id": 1, "question": "q", "response": "r"}) + "\n")
    r = CliRunner().invoke(app, ["recycle", str(src), "-o", str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and "no row has field 'answer'" in r.output
    r = CliRunner().invoke(app, ["recycle", str(src), "-o", str(tmp_path / "o.parquet"), "--template-set", "huge"])
    assert r.exit_code == 2 and "unknown template set" in r.output
