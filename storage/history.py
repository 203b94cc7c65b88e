"""A run's history as plain rows, for reports and for the UI after a resume (reads the store only)."""

from __future__ import annotations

import math

from rlcadence.storage.layout import live_files
from rlcadence.storage.location import StoreLocation
from rlcadence.storage.query import connect


def _clean(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def metric_rows(loc: StoreLocation, run_ids: list[str]) -> dict[str, list[dict]]:
    """``{run_id: [metrics row as a dict, by step]}``; a run with no committed step maps to ``[]``."""
    out: dict[str, list[dict]] = {r: [] for r in run_ids}
    if not run_ids or not live_files(loc, "metrics"):
        return out
    con = connect(loc)
    marks = ", ".join("?" for _ in run_ids)
    rel = con.execute(f"SELECT * FROM metrics WHERE run_id IN ({marks}) ORDER BY run_id, step", run_ids)
    cols = [d[0] for d in rel.description]
    for values in rel.fetchall():
        row = {c: _clean(v) for c, v in zip(cols, values, strict=True)}
        out[row["run_id"]].append(row)
    return out
