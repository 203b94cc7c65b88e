"""Data at rest: the store (local directory or ``s3://bucket/prefix``), its tables, checkpoints and SQL.

Knows pyarrow, DuckDB and boto3, never torch. Open a store with :func:`rlcadence.storage.stores.open_location`.
"""
