"""`rlcadence sql` and `connect()` cannot write, attach, install, load, or read outside the store."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pyarrow as pa
import pytest

from rlcadence.cli import main
from rlcadence.storage import tables
from rlcadence.storage.query import QueryError, connect, query, run_sql
from rlcadence.storage.stores import open_location


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` (dot-files included) with its sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    loc = open_location(str(root))
    tables.write_run_status(loc, "r1", "running", {"lr": 1e-3})
    tables.write_metrics(loc, "r1", 0, {"reward_mean": 0.5})
    tables.write_step_table(loc, "rollouts", "r1", 0, pa.Table.from_pylist([{"run_id": "r1", "step": 0, "reward": 1.0}]))
    monkeypatch.chdir(tmp_path)  # DuckDB's default temp dir and relative paths would land here
    return root


def hostile(store: Path, outside: Path) -> list[str]:
    return [
        f"COPY (SELECT 1 AS x) TO '{store}/rollouts/injected.parquet' (FORMAT parquet)",
        f"COPY (SELECT 1 AS x) TO '{store}/rollouts/run_id=r1/step=0/part-0.parquet' (FORMAT parquet)",
        f"ATTACH '{store}/evil.duckdb'",
        f"COPY (SELECT 1 AS x) TO '{outside}/x.csv'",
        "COPY (SELECT 1 AS x) TO 'relative.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        f"SELECT * FROM read_text('{store}/**')",
        "SELECT * FROM glob('/*')",
        f"SELECT * FROM glob('{store}/**')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "SET memory_limit = '100GB'",
        f"SET temp_directory = '{outside}'",
        f"PRAGMA profiling_output = '{outside}/profile.txt'",
        f"EXPORT DATABASE '{store}/exported'",
        f"EXPORT DATABASE '{outside}/exported'",
        "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
        "SELECT * FROM tables",  # a Python name in scope: no replacement scans
    ]


def test_hostile_statements_change_nothing(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    before, around = snapshot(store), snapshot(tmp_path)
    con = connect(open_location(str(store)))
    statements = hostile(store, outside)
    assert len(statements) >= 12
    for sql in statements:
        with pytest.raises(QueryError) as ei:
            run_sql(con, sql)
        assert "\n" not in str(ei.value), sql
        assert snapshot(store) == before, sql
        assert snapshot(tmp_path) == around, sql  # nothing written next to the store or in the cwd
    # the connection still answers, and its settings are the locked ones
    assert run_sql(con, "SELECT count(*) FROM rollouts")[1] == [(1,)]
    settings = dict(run_sql(con, "SELECT name, value FROM duckdb_settings() WHERE name IN "
                                 "('enable_external_access', 'lock_configuration', 'autoload_known_extensions')")[1])
    assert settings == {"enable_external_access": "false", "lock_configuration": "true",
                        "autoload_known_extensions": "false"}


def test_views_read_all_tables_with_partition_pruning(store):
    loc = open_location(str(store))
    tables.write_metrics(loc, "r1", 1, {"reward_mean": 0.7, "eval_accuracy": 0.25})
    cols, rows = query(loc, "SELECT step, reward_mean, eval_accuracy FROM metrics ORDER BY step")
    assert rows == [(0, 0.5, None), (1, 0.7, 0.25)]  # union of the files' columns
    assert query(loc, "SELECT run_id, status FROM runs")[1] == [("r1", "running")]


def test_a_runaway_query_is_stopped_by_the_time_limit(store):
    t0 = time.perf_counter()
    with pytest.raises(QueryError, match="stopped after 0.5 s"):
        query(open_location(str(store)), "SELECT count(*) FROM range(100000000) a, range(100000000) b", timeout_s=0.5)
    assert time.perf_counter() - t0 < 5


def test_memory_limit_applies(store):
    with pytest.raises(QueryError, match="memory"):
        query(open_location(str(store)), "SELECT list(range) FROM range(50000000)", memory_limit="64MB")


def test_cli_sql_errors_are_one_line_with_exit_2(store, capsys):
    assert main(["sql", f"COPY (SELECT 1) TO '{store}/x.parquet'", "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Permission Error") and "\n" not in err
    assert main(["sql", "SELEC 1", "--store", str(store)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: Parser Error")


def test_cli_sql_on_a_missing_store_does_not_create_it(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["sql", "SELECT 1", "--store", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()


def test_cli_runs_on_a_store_whose_runs_never_evaluated(tmp_path, capsys):
    """Dataset-environment runs write no eval_accuracy column: `runs` still lists them (NULL there)."""
    loc = open_location(str(tmp_path / "store"))
    tables.write_run_status(loc, "ds", "completed", {})
    tables.write_metrics(loc, "ds", 0, {"reward_mean": 0.25})
    assert main(["runs", "--store", str(tmp_path / "store")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["run_id", "status", "last_step", "last_reward", "last_eval_acc"]
    assert lines[2].split()[:5] == ["ds", "completed", "0", "0.25", "None"]
