"""`spark sql` reads the run's own tables and nothing else (issue 20, item 1).

Each escape below was tried against DuckDB 2.0 with the sandbox off first (where it read the
file or wrote it); with the sandbox on, each must be refused with a one-line error while the
views keep working.
"""

import os

import pytest
from typer.testing import CliRunner

from spark_cli.main import app
from spark_core.config import ProblemsConfig, SparkConfig
from spark_core.data.sql import SqlError, connect, query
from spark_core.stages.problems import prepare_problems


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    prepare_problems(SparkConfig(problems=ProblemsConfig(n_train=50, n_held_out=10)), run)
    secret = tmp_path / "secret.csv"  # a readable file beside the run, outside it
    secret.write_text("user,password\nroot,hunter2\n")
    return run


def _escapes(run):
    secret = run.parent / "secret.csv"
    tables = run / "tables"
    return {
        "read_csv": f"select * from read_csv('{secret}')",
        "read_csv_auto": f"select * from read_csv_auto('{secret}')",
        "replacement scan": f"select * from '{secret}'",
        "read_text": f"select * from read_text('{secret}')",
        "read_blob": f"select * from read_blob('{secret}')",
        "read_json": f"select * from read_json('{run / 'run.json'}')",
        "sniff_csv": f"select * from sniff_csv('{secret}')",
        "parquet_metadata": f"select * from parquet_metadata('{secret}')",
        "glob": f"select * from glob('{run.parent}/*')",
        "dot-dot": f"select * from read_csv('{tables}/../../secret.csv')",
        "system file": "select * from read_csv('/etc/passwd')",
        "url": "select * from read_parquet('https://example.com/t.parquet')",
        "symlink file": f"select * from read_csv('{tables}/problems/leak.csv')",
        "symlink dir": f"select * from read_csv('{tables}/outside/secret.csv')",
        "query()": f"select * from query('select * from read_csv(''{secret}'')')",
        "subquery": f"select count(*) from problems where id in (select column0 from read_csv('{secret}'))",
    }


def test_every_escape_is_refused_and_views_still_work(run):
    (run / "tables" / "problems" / "leak.csv").symlink_to(run.parent / "secret.csv")
    (run / "tables" / "outside").symlink_to(run.parent)
    for name, sql in _escapes(run).items():
        with pytest.raises(SqlError) as err:
            query(run, sql)
        msg = str(err.value)
        assert "\n" not in msg and "hunter2" not in msg, name
        assert "refused" in msg or "does not exist" in msg, (name, msg)
    assert query(run, "select count(*) as n from problems").to_pylist() == [{"n": 60}]
    assert query(run, "select split, count(*) n from problems group by 1 order by 1").num_rows == 2


@pytest.mark.parametrize("statement", [
    "set enable_external_access = true",
    "reset enable_external_access",
    "set lock_configuration = false",
    "pragma enable_external_access = true",
    "set allowed_directories = ['/']",
    "attach '/tmp/spark-sandbox-other.db' as m",
    "load httpfs",
    "copy (select 1) to 'x.csv'",
])
def test_the_lock_holds_even_past_the_statement_filter(run, statement):
    """Straight on the connection (past check_read_only): DuckDB's own lock must refuse."""
    import duckdb

    con = connect(run)
    with pytest.raises(duckdb.Error):
        con.execute(statement)
    secret = run.parent / "secret.csv"
    with pytest.raises(duckdb.PermissionException):
        con.execute(f"select * from read_csv('{secret}')").fetchall()
    assert con.execute("select count(*) from problems").fetchone() == (60,)


def test_the_cli_refuses_with_one_line_and_exit_2(run):
    r = CliRunner().invoke(app, ["sql", f"select * from read_csv('{run.parent / 'secret.csv'}')", "--run", str(run)])
    assert r.exit_code == 2, r.output
    assert "refused" in r.output and "reads only the run's own tables" in r.output and "hunter2" not in r.output
    assert r.output.strip().count("\n") == 0 and "Traceback" not in r.output


def test_a_run_reached_through_a_symlink_still_works(run, tmp_path):
    link = tmp_path / "link-to-run"
    os.symlink(run, link)
    assert query(link, "select count(*) as n from problems").to_pylist() == [{"n": 60}]
    with pytest.raises(SqlError, match="refused"):
        query(link, f"select * from read_csv('{tmp_path / 'secret.csv'}')")
