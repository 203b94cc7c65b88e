"""Read-only SQL over a store with DuckDB: views ``rollouts``, ``metrics``, ``runs``, ``rejected``, ``evals``.

The files are plain hive-partitioned Parquet; any DuckDB or pandas reads them without rlcadence.

Why the connection cannot write: DuckDB has no read-only file system, and ``allowed_directories`` grants
writes as well as reads (``COPY ... TO '<store>/rollouts/x.parquet'`` would break every later query). So
DuckDB itself gets no file access at all: ``enable_external_access=false`` with empty
``allowed_directories``/``allowed_paths``, no extension autoload/autoinstall, no persistent secrets, no
temp directory, then ``lock_configuration=true`` so no statement can undo it. The tables are pyarrow
datasets over the store's own file system (local or S3) registered as views: a view over an Arrow scan
can be read, never written. Filters and projections are pushed into the Arrow scan, which prunes
partitions (``run_id``, ``step``) before opening a file.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pyarrow as pa

from rlcadence.storage.layout import live_files
from rlcadence.storage.location import StoreLocation
from rlcadence.storage.tables import TABLES

if TYPE_CHECKING:  # duckdb and pyarrow.dataset (which imports pandas) load on first use: the CLI starts fast
    import duckdb
    import pyarrow.dataset as ds

DEFAULT_MEMORY_LIMIT = "2GB"
DEFAULT_TIMEOUT_S = 60.0

PARTITIONS = {
    "rollouts": pa.schema([("run_id", pa.string()), ("step", pa.int64())]),
    "metrics": pa.schema([("run_id", pa.string()), ("step", pa.int64())]),
    "runs": pa.schema([("run_id", pa.string())]),
    "rejected": pa.schema([("run_id", pa.string())]),
    "evals": pa.schema([("run_id", pa.string()), ("step", pa.int64())]),
}


class QueryError(Exception):
    """A query that failed or was refused; the message is one line, fit for a CLI user."""


def _locked_config(memory_limit: str, threads: int | None) -> dict:
    config = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_persistent_secrets": False,
        "python_enable_replacements": False,  # no SELECT over whatever Python object is in the caller's scope
        "temp_directory": "",  # no spilling: nothing is written anywhere, a too-big query fails on memory_limit
        "memory_limit": memory_limit,
    }
    if threads is not None:
        config["threads"] = threads
    return config


def _dataset(loc: StoreLocation, table: str, files: list[str]) -> ds.Dataset:
    """One Arrow dataset over ``files`` with the union of their columns (files may differ, e.g. metrics)."""
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(PARTITIONS[table], flavor="hive")
    paths = [loc.path(f) for f in files]
    schemas = [PARTITIONS[table]]
    for f in files:  # one footer each (as DuckDB's union_by_name does); a corrupt file is named here
        try:
            schemas.append(ds.dataset(loc.path(f), format="parquet", filesystem=loc.fs).schema)
        except (pa.ArrowException, OSError) as e:
            raise QueryError(f"{loc.uri_of(f)}: not a readable Parquet file ({_first_line(str(e))})") from None
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except pa.ArrowException as e:
        raise QueryError(f"table {table} in store {loc.uri}: files disagree on a column ({_first_line(str(e))})") from None
    return ds.dataset(paths, schema=schema, format="parquet", filesystem=loc.fs,
                      partitioning=partitioning, partition_base_dir=loc.path(table))


def connect(loc: StoreLocation, *, memory_limit: str = DEFAULT_MEMORY_LIMIT,
            threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A locked, read-only DuckDB connection with one view per table that exists in the store."""
    import duckdb

    try:
        con = duckdb.connect(config=_locked_config(memory_limit, threads))
    except duckdb.Error as e:
        raise QueryError(f"cannot open DuckDB: {_first_line(str(e))}") from None
    for table in TABLES:
        files = live_files(loc, table)  # each row once, also while a compaction is in flight or was killed
        if not files:
            continue
        con.register(f"_{table}_files", _dataset(loc, table, files))
        source = f"_{table}_files"
        if table == "runs":
            con.execute(
                f"CREATE VIEW runs AS SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER "
                f"(PARTITION BY run_id ORDER BY updated_at DESC) AS rn FROM {source}) WHERE rn = 1"
            )
        else:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM {source}")
    con.execute("SET lock_configuration = true")
    return con


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, timeout_s: float = DEFAULT_TIMEOUT_S):
    """Run ``sql`` on ``con`` within ``timeout_s`` seconds: (column names, rows), or a one-line QueryError."""
    import duckdb

    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        rel = con.sql(sql)
        if rel is None:
            return [], []
        return rel.columns, rel.fetchall()
    except duckdb.InterruptException:
        raise QueryError(f"query stopped after {timeout_s:g} s (raise the limit with --timeout)") from None
    except duckdb.OutOfMemoryException as e:
        raise QueryError(f"query needs more memory than the limit (--memory-limit): {_first_line(str(e))}") from None
    except duckdb.Error as e:
        raise QueryError(_first_line(str(e))) from None
    finally:
        timer.cancel()


def query(loc: StoreLocation, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
          memory_limit: str = DEFAULT_MEMORY_LIMIT):
    """Run ``sql`` on a read-only connection to ``loc``: (column names, rows)."""
    return run_sql(connect(loc, memory_limit=memory_limit), sql, timeout_s)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
