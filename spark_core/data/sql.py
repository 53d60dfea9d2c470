"""Read-only SQL over a run's tables with in-process DuckDB.

Every table in `store.SCHEMAS` is a view, whether or not it has files yet (an empty table is
an empty view with the right columns, so a query written today works on a run that has not
reached that stage). Only SELECT-like statements run: anything that could write (DDL, DML,
COPY, ATTACH, INSTALL/LOAD, SET, EXPORT, ...) is refused before it reaches DuckDB.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb
import pyarrow as pa

from spark_core.data.store import SCHEMAS, UNPARTITIONED, DUCKDB_TYPES, table_root

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class SqlError(ValueError):
    """A refused or failing query, with a one-line message."""


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def view_sql(run_dir: Path, table: str) -> str:
    """CREATE VIEW for one table: over its Parquet files, or a typed empty SELECT."""
    root = table_root(run_dir, table).resolve()
    files = list(root.rglob("*.parquet")) if root.is_dir() else []
    if files:
        pattern = str(root / ("*.parquet" if table in UNPARTITIONED else "*/*.parquet"))
        hive = "false" if table in UNPARTITIONED else "true"
        src = f"read_parquet({_quote(pattern)}, hive_partitioning = {hive}, union_by_name = true)"
        return f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {src};"
    cols = [f"CAST(NULL AS {DUCKDB_TYPES[f.type]}) AS {f.name}" for f in SCHEMAS[table]]
    if table not in UNPARTITIONED:
        cols.append("CAST(NULL AS INTEGER) AS iteration")
    return f"CREATE OR REPLACE VIEW {table} AS SELECT {', '.join(cols)} WHERE false;"


def views_sql(run_dir: Path) -> str:
    """View definitions for every table, loadable by any DuckDB client (`.read FILE`)."""
    header = f"-- SPARK run {Path(run_dir).resolve()}: one view per table\n"
    return header + "\n".join(view_sql(run_dir, t) for t in SCHEMAS) + "\n"


def connect(run_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table and its configuration locked."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SqlError(f"{run_dir}: no such run directory")
    con = duckdb.connect(":memory:")
    con.execute(views_sql(run_dir))
    tables = str((run_dir / "tables").resolve()) + "/"
    # The order matters: the allowed directory must be set while external access is on, and
    # the lock last, so that no statement (SET, RESET, PRAGMA) can undo the sandbox.
    con.execute("SET temp_directory = ''")  # else DuckDB also allows reads under ./.tmp/
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"SET allowed_directories = [{_quote(tables)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list:
    """The statements of `sql`; SqlError unless every one is a SELECT (or EXPLAIN)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise SqlError(f"cannot parse query: {str(e).splitlines()[0]}") from e
    if not statements:
        raise SqlError("empty query")
    for st in statements:
        if st.type not in _ALLOWED:
            kind = str(st.type).rsplit(".", 1)[-1]
            raise SqlError(f"refused: {kind} statements are not allowed; spark sql is read-only (SELECT only)")
    return statements


def query(run_dir: Path, sql: str) -> pa.Table:
    """Run a read-only query over the run's views and return the last statement's result."""
    con = connect(run_dir)
    try:
        result = None
        for st in check_read_only(con, sql):
            result = con.sql(st.query).to_arrow_table()
        return result
    except duckdb.PermissionException as e:
        raise SqlError(f"refused: {str(e).splitlines()[0]} (spark sql reads only the run's own tables, under "
                       f"{Path(run_dir) / 'tables'})") from e
    except duckdb.Error as e:
        raise SqlError(str(e).splitlines()[0]) from e
    finally:
        con.close()


def format_result(table: pa.Table, fmt: str) -> str:
    """The result as `table` (aligned text), `csv`, or `json` (an array of objects)."""
    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps(rows, default=str, ensure_ascii=False, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows([[r[c] for c in table.column_names] for r in rows])
        return buf.getvalue()
    if fmt != "table":
        raise SqlError(f"unknown format {fmt!r}; use table, csv or json")
    cells = [[("NULL" if v is None else str(v)).replace("\n", "\\n") for v in r.values()] for r in rows]
    cells = [[c if len(c) <= 80 else c[:77] + "..." for c in row] for row in cells]
    widths = [max([len(n)] + [len(row[i]) for row in cells]) for i, n in enumerate(table.column_names)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(table.column_names), "-+-".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"
