"""SQL over a store with DuckDB: views ``rollouts``, ``metrics``, ``runs``, ``rejected``.

The files are plain hive-partitioned Parquet; any DuckDB or pandas reads them without rlcadence.
"""

from __future__ import annotations

import duckdb

from rlcadence.storage.location import StoreLocation
from rlcadence.storage.tables import TABLES


def connect(loc: StoreLocation) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per table that exists in the store."""
    con = duckdb.connect()
    if not loc.is_local:
        from rlcadence.storage.s3 import configure_duckdb

        configure_duckdb(con, loc)
    for table in TABLES:
        if not loc.list_files(table, suffix=".parquet"):
            continue
        glob = loc.uri_of(table, "**", "*.parquet")
        source = f"read_parquet('{glob}', hive_partitioning=true, union_by_name=true)"
        if table == "runs":
            con.execute(
                f"CREATE VIEW runs AS SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER "
                f"(PARTITION BY run_id ORDER BY updated_at DESC) AS rn FROM {source}) WHERE rn = 1"
            )
        else:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM {source}")
    return con


def query(loc: StoreLocation, sql: str):
    """Run ``sql`` and return a DuckDB relation result as (column names, rows)."""
    con = connect(loc)
    rel = con.sql(sql)
    if rel is None:
        return [], []
    return rel.columns, rel.fetchall()
