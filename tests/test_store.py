import json
import subprocess
import sys
import textwrap

import duckdb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from spark_cli.main import app
from spark_core.config import ProblemsConfig, SparkConfig
from spark_core.data.sql import SqlError, query, views_sql
from spark_core.stages.problems import prepare_problems
from spark_core.data.store import (
    SCHEMAS,
    StoreError,
    manifest_path,
    read_manifest,
    read_table,
    stage_complete,
    write_manifest,
    write_table,
)


def _update(step, loss=0.5):
    return dict(phase="policy", step=step, loss=loss, policy_loss=loss, kl=0.0, entropy=1.0, clip_frac_low=0.0,
                clip_frac_high=0.0, grad_norm=1.0, lr=1e-5, tokens=10, seconds=0.1, skipped=False)


def test_partitioned_write_read_and_replace(tmp_path):
    write_table(tmp_path, "updates", [_update(0), _update(1)], iteration=0, part="policy")
    write_table(tmp_path, "updates", [_update(2)], iteration=1, part="policy")
    assert (tmp_path / "tables/updates/iteration=1/policy.parquet").is_file()
    t = read_table(tmp_path, "updates")
    assert t.num_rows == 3 and sorted(t.column("iteration").to_pylist()) == [0, 0, 1]
    # a re-run of the same stage replaces its part: no duplicates
    write_table(tmp_path, "updates", [_update(2, loss=9.0)], iteration=1, part="policy")
    t = read_table(tmp_path, "updates")
    assert t.num_rows == 3 and 9.0 in t.column("loss").to_pylist()


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{**_update(0), "bogus": 1}], "unknown column 'bogus'"),
        ([{k: v for k, v in _update(0).items() if k != "loss"}], "row 0 column 'loss': null in a required column"),
        ([_update(0), {**_update(1), "step": "two"}], "row 1 column 'step'"),
    ],
)
def test_schema_is_validated_on_write(tmp_path, rows, message):
    with pytest.raises(StoreError, match=message):
        write_table(tmp_path, "updates", rows, iteration=0)
    assert not (tmp_path / "tables" / "updates").exists()


def test_bad_table_or_partition(tmp_path):
    with pytest.raises(StoreError, match="unknown table"):
        write_table(tmp_path, "nope", [], iteration=0)
    with pytest.raises(StoreError, match="needs an iteration"):
        write_table(tmp_path, "updates", [_update(0)])
    with pytest.raises(StoreError, match="not partitioned"):
        write_table(tmp_path, "problems", [], iteration=0)


def test_empty_tables_are_empty_views_with_columns(tmp_path):
    for table, schema in SCHEMAS.items():
        t = query(tmp_path, f"select * from {table}")
        assert t.num_rows == 0
        assert set(schema.names) <= set(t.column_names)
    t = query(tmp_path, "select kind, count(*) from judge_data group by kind")
    assert t.num_rows == 0


def _problems_run(tmp_path):
    cfg = SparkConfig(problems=ProblemsConfig(n_train=50, n_held_out=10))
    prepare_problems(cfg, tmp_path)
    return cfg


def test_prepare_stage_writes_and_skips(tmp_path):
    cfg = _problems_run(tmp_path)
    assert read_manifest(tmp_path, "problems", None)["rows"] == {"train": 50, "held_out": 10}
    before = manifest_path(tmp_path, "problems", None).read_text()
    prepare_problems(cfg, tmp_path)  # complete: skipped, manifest untouched
    assert manifest_path(tmp_path, "problems", None).read_text() == before
    t = query(tmp_path, "select split, count(*) as n from problems group by split order by split")
    assert t.to_pylist() == [{"split": "held_out", "n": 10}, {"split": "train", "n": 50}]
    # a change the stage depends on redoes it; one it does not depend on skips it
    prepare_problems(SparkConfig(problems=cfg.problems, train={"lr": 0.5}), tmp_path)
    assert manifest_path(tmp_path, "problems", None).read_text() == before
    prepare_problems(SparkConfig(seed=1, problems=cfg.problems), tmp_path)
    assert manifest_path(tmp_path, "problems", None).read_text() != before


def test_same_config_and_seed_give_the_same_table(tmp_path):
    _problems_run(tmp_path / "a")
    _problems_run(tmp_path / "b")
    assert read_table(tmp_path / "a", "problems").equals(read_table(tmp_path / "b", "problems"))


def test_manifest_is_incomplete_when_an_output_is_gone(tmp_path):
    path = write_table(tmp_path, "updates", [_update(0)], iteration=3, part="policy")
    write_manifest(tmp_path, "train_policy", 3, "abc", outputs={"updates": path}, rows={"updates": 1})
    doc = json.loads(manifest_path(tmp_path, "train_policy", 3).read_text())
    assert doc["outputs"] == {"updates": "tables/updates/iteration=3/policy.parquet"} and doc["rows"] == {"updates": 1}
    assert stage_complete(tmp_path, "train_policy", 3, "abc")
    assert not stage_complete(tmp_path, "train_policy", 3, "other-config")
    path.unlink()
    assert not stage_complete(tmp_path, "train_policy", 3, "abc")


@pytest.mark.parametrize(
    "statement",
    [
        "drop view problems",
        "create table t as select 1",
        "insert into problems values (1)",
        "delete from problems",
        "update problems set id = 'x'",
        "copy problems to '/tmp/spark-leak.csv'",
        "attach '/tmp/spark-other.db'",
        "install httpfs",
        "load httpfs",
        "set threads = 1",
        "export database '/tmp/spark-export'",
        "select 1; drop view problems",
    ],
)
def test_sql_refuses_statements_that_write(tmp_path, statement):
    _problems_run(tmp_path)
    with pytest.raises(SqlError, match="refused: .* read-only"):
        query(tmp_path, statement)
    r = CliRunner().invoke(app, ["sql", statement, "--run", str(tmp_path)])
    assert r.exit_code == 2 and "refused" in r.output
    assert query(tmp_path, "select count(*) as n from problems").to_pylist() == [{"n": 60}]


def test_sql_cli_formats_and_export(tmp_path):
    _problems_run(tmp_path)
    runner = CliRunner()
    q = "select split, count(*) as n from problems group by split order by split"
    r = runner.invoke(app, ["sql", q, "--run", str(tmp_path), "--format", "csv"])
    assert r.exit_code == 0 and r.output == "split,n\nheld_out,10\ntrain,50\n"
    out = tmp_path / "r.json"
    r = runner.invoke(app, ["sql", q, "--run", str(tmp_path), "--format", "json", "-o", str(out)])
    assert r.exit_code == 0 and json.loads(out.read_text()) == [{"split": "held_out", "n": 10}, {"split": "train", "n": 50}]
    r = runner.invoke(app, ["sql", q, "--run", str(tmp_path)])
    assert "held_out | 10" in r.output and "(2 rows)" in r.output
    views = tmp_path / "views.sql"
    r = runner.invoke(app, ["sql", "--export", str(views), "--run", str(tmp_path)])
    assert r.exit_code == 0
    con = duckdb.connect()  # any DuckDB client can load the exported views
    con.execute(views.read_text())
    assert con.execute("select count(*) from problems").fetchone() == (60,)
    assert con.execute("select count(*) from rollouts").fetchone() == (0,)
    r = runner.invoke(app, ["sql", "select * from nosuch", "--run", str(tmp_path)])
    assert r.exit_code == 2 and "nosuch" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["sql", "select 1", "--run", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such run directory" in r.output


def test_write_killed_midway_leaves_table_as_it_was(tmp_path):
    """SIGKILL a process in the middle of writing a part that replaces an existing one."""
    write_table(tmp_path, "updates", [_update(0), _update(1)], iteration=0, part="policy")
    before = read_table(tmp_path, "updates")
    script = textwrap.dedent(
        f"""
        import os, signal
        import pyarrow.parquet as pq
        from spark_core.data import store

        real = pq.write_table
        def write_half_then_die(table, where, **kw):
            real(table.slice(0, table.num_rows // 2), where, **kw)  # a partial file on disk...
            os.kill(os.getpid(), signal.SIGKILL)                     # ...and the process dies
        pq.write_table = write_half_then_die
        rows = [dict(phase="policy", step=i, loss=7.0, policy_loss=7.0, kl=0.0, entropy=1.0, clip_frac_low=0.0,
                     clip_frac_high=0.0, grad_norm=1.0, lr=1e-5, tokens=10, seconds=0.1, skipped=False)
                for i in range(1000)]
        store.write_table({str(tmp_path)!r}, "updates", rows, iteration=0, part="policy")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert list((tmp_path / ".staging").iterdir())  # the half-written file exists, outside the table
    after = read_table(tmp_path, "updates")
    assert after.equals(before)
    assert query(tmp_path, "select count(*) as n from updates").to_pylist() == [{"n": 2}]
    from spark_core.data.store import clean_staging

    assert clean_staging(tmp_path) == 1


def test_views_sql_lists_every_table(tmp_path):
    text = views_sql(tmp_path)
    for table in SCHEMAS:
        assert f"CREATE OR REPLACE VIEW {table} AS" in text


def test_list_column_round_trip(tmp_path):
    row = dict(judge_id="j1", kind="pairwise", source_prompt_id="p1", source_sample_ids=[0, 3], template_id="c-pair-1",
               judge_input="answer", prompt="Which?", label="A", iteration_consumed=None)
    write_table(tmp_path, "judge_data", [row], iteration=2, part="recycle")
    t = query(tmp_path, "select source_sample_ids, iteration, iteration_consumed from judge_data")
    assert t.to_pylist() == [{"source_sample_ids": [0, 3], "iteration": 2, "iteration_consumed": None}]
    assert isinstance(read_table(tmp_path, "judge_data").schema.field("source_sample_ids").type, pa.ListType)
