"""Compaction: a run's committed step files merged into few large Parquet files, safe at every kill point.

Why: a run writes one file per step per table (the step's commit unit). At 10,000 steps that is 10,000
files per table; every query opens each one (a GET each on S3) and a one-row metrics file costs ~16 KB of
Parquet footer. Compaction keeps the write path as it is and merges behind it:

* in the run, every ``compact_every`` steps (the commit stage): the committed step files not yet compacted
  become one file; ``FANOUT`` adjacent files of the same span then merge into one (spans N, 10N, 100N: each
  row is rewritten about log10(steps / N) times, and a running run has at most ~10 files per level);
* at the end of the run, and on demand (``rlcadence compact``): everything merged into files of up to
  ``target_bytes``.

One merge of files ``F`` into steps ``a..b`` (see :mod:`rlcadence.storage.layout` for the names)::

    1. write .compacted-a-b.parquet.pending  (whole: temp + rename locally, one PUT on S3)
    2. delete F                               (rlcadence readers now read a..b from the pending file)
    3. publish: rename to compacted-a-b.parquet (S3: server-side copy, then delete the pending copy)

A kill before 1 completes leaves only a temp file; after it, the pending file is a complete copy, so
:func:`recover` (run by the next compaction, by the run's start, by ``rlcadence compact`` and ``gc``)
finishes steps 2 and 3. Only committed steps (those with a metrics row) are ever compacted, and a
committed step is never written again, so the files being merged do not change under the merge.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from rlcadence import faults
from rlcadence.storage.layout import (
    STEP_TABLES,
    Piece,
    compacted_name,
    list_pieces,
    live_pieces,
    pending_name,
    resolve,
    run_dir,
)
from rlcadence.storage.location import StoreLocation
from rlcadence.storage.tables import recently_written

FANOUT = 10
DEFAULT_TARGET_BYTES = 256 * 2**20
ROW_GROUP_ROWS = 1024 * 1024  # pyarrow's default, as a one-file copy gets: on S3 each row group is more GETs
STREAM_ROW_GROUP_ROWS = 128 * 1024  # merges too large for memory buffer this many rows at a time
IN_MEMORY_BYTES = 64 * 2**20  # sources up to this size are read at once; larger merges stream by file


@dataclass(frozen=True)
class TableCompaction:
    """What one compaction did to one table of one run."""

    table: str
    run_id: str
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    merges: int


# -- merging ---------------------------------------------------------------------------------------------
def _read(loc: StoreLocation, p: Piece) -> pa.Table:
    """A step file this process wrote comes from memory (the in-run case); any other file from the store."""
    cached = recently_written(loc, p.path) if p.kind == "step" else None
    return cached if cached is not None else pq.ParquetFile(pa.BufferReader(loc.read_bytes(p.path))).read()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order (missing ones null): metrics files differ by step."""
    if table.schema.remove_metadata().equals(schema):
        return table
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def merged_bytes(loc: StoreLocation, group: list[Piece]) -> bytes:
    """One zstd Parquet file with the rows of ``group`` in step order (row groups of up to 1M rows in memory,
    128K when streamed)."""
    small = sum(p.size for p in group) <= IN_MEMORY_BYTES
    tables = [_read(loc, p) for p in group] if small else None
    if tables is not None:
        schemas = [t.schema for t in tables]
    else:
        schemas = []
        for p in group:
            with loc.fs.open_input_file(loc.path(p.path)) as f:
                schemas.append(pq.read_schema(f))
    schema = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    sink = io.BytesIO()
    if tables is not None:  # all in memory: one concat (missing columns null), one write
        data = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="permissive")
        pq.write_table(data.select(schema.names).cast(schema), sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        return sink.getvalue()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        buffered: list[pa.Table] = []
        rows = 0
        for p in group:
            t = _conform(_read(loc, p), schema)
            buffered.append(t)
            rows += t.num_rows
            if rows >= STREAM_ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(buffered), row_group_size=STREAM_ROW_GROUP_ROWS)
                buffered, rows = [], 0
        if buffered:
            writer.write_table(pa.concat_tables(buffered), row_group_size=STREAM_ROW_GROUP_ROWS)
    return sink.getvalue()


def _delete_sources(loc: StoreLocation, pieces: list[Piece], last: int) -> None:
    paths = [p.path for p in pieces]
    half = len(paths) // 2
    loc.delete_files(paths[:half])
    faults.maybe_crash("compact-deleting", last)
    loc.delete_files(paths[half:])
    if loc.is_local:  # the emptied step=<t>/ directories (S3 has no directories)
        for p in pieces:
            if p.kind == "step":
                with contextlib.suppress(OSError):  # not empty, or already gone
                    os.rmdir(posixpath.dirname(loc.path(p.path)))


def _publish(loc: StoreLocation, table: str, run_id: str, first: int, last: int) -> None:
    loc.move_file((*run_dir(table, run_id), pending_name(first, last)),
                  (*run_dir(table, run_id), compacted_name(first, last)),
                  after_copy=lambda: faults.maybe_crash("compact-copied", last))


def merge(loc: StoreLocation, table: str, run_id: str, group: list[Piece]) -> None:
    """Replace the files of ``group`` (contiguous steps) by one compacted file, by the protocol above.

    Fail points (``RLCADENCE_CRASH_AT=<point>:<last step>``): ``compact-start``, ``write:compacted``
    (half the pending file in a temp file), ``compact-written``, ``compact-deleting`` (half the sources
    gone), ``compact-deleted``, ``compact-copied`` (S3: published, pending copy not yet deleted),
    ``compact-published``."""
    first, last = group[0].first, group[-1].last
    faults.maybe_crash("compact-start", last)
    payload = merged_bytes(loc, group)
    pending = (*run_dir(table, run_id), pending_name(first, last))
    faults.maybe_crash_mid_write(loc, pending, payload, table="compacted", step=last)
    loc.write_bytes(payload, *pending)
    faults.maybe_crash("compact-written", last)
    _delete_sources(loc, group, last)
    faults.maybe_crash("compact-deleted", last)
    _publish(loc, table, run_id, first, last)
    faults.maybe_crash("compact-published", last)


# -- recovery --------------------------------------------------------------------------------------------
def recover(loc: StoreLocation, run_id: str, *, sweep: bool = True) -> int:
    """Finish what a killed compaction of ``run_id`` left: publish a pending file (deleting what it
    replaces first), drop a pending copy already published and any file a wider one covers; with
    ``sweep``, also temp files, emptied step directories and S3's unfinished multipart uploads. Returns
    how many files it acted on. With ``sweep`` only while nothing writes the run; without it (the in-run
    compaction, on a thread beside the run's own writer) it touches only files of committed steps."""
    n = 0
    for table in STEP_TABLES:
        pieces = list_pieces(loc, table, run_id)[0].get(run_id, [])
        published = {(p.first, p.last) for p in pieces if p.kind == "compacted"}
        for pend in (p for p in pieces if p.kind == "pending"):
            if (pend.first, pend.last) in published:
                loc.delete_file(pend.path)
            else:
                _delete_sources(loc, [p for p in pieces if p.kind != "pending" and pend.covers(p)], pend.last)
                _publish(loc, table, run_id, pend.first, pend.last)
            n += 1
        pieces = list_pieces(loc, table, run_id)[0].get(run_id, [])
        live = set(resolve(pieces))
        stray = [p for p in pieces if p not in live]  # covered by a compacted file: duplicates for a glob
        loc.delete_files([p.path for p in stray])
        n += len(stray)
        if not sweep:  # a temp file or an empty step=<t>/ may be the run's writer at work
            continue
        n += loc.sweep_temp_files(*run_dir(table, run_id))
        if loc.is_local:  # step=<t>/ directories a kill left empty (their file deleted, the rmdir not reached)
            for name in loc.list_dirs(*run_dir(table, run_id)):
                with contextlib.suppress(OSError):
                    os.rmdir(loc.path(*run_dir(table, run_id), name))
        n += loc.abort_uploads(loc.path(*run_dir(table, run_id), ".compacted-"))
    return n


# -- planning ----------------------------------------------------------------------------------------------
def _contiguous_runs(pieces: list[Piece]) -> list[list[Piece]]:
    runs: list[list[Piece]] = []
    for p in pieces:
        if runs and runs[-1][-1].last + 1 == p.first:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def next_group(live: list[Piece], upto: int, *, full: bool, target_bytes: int) -> list[Piece] | None:
    """The next files to merge among ``live`` (steps <= ``upto``), or None when the run is compact enough."""
    cands = [p for p in live if p.last <= upto]
    if full:  # greedy: adjacent files while the merged file stays under target_bytes
        for run in _contiguous_runs(cands):
            group: list[Piece] = []
            for p in run + [None]:
                if p is not None and (not group or sum(g.size for g in group) + p.size <= target_bytes):
                    group.append(p)
                    continue
                if len(group) >= 2:
                    return group
                group = [p] if p is not None else []
        return None
    for run in _contiguous_runs([p for p in cands if p.kind == "step"]):
        return run  # level 0: the step files since the last compaction
    compacted = [p for p in cands if p.kind == "compacted"]
    for i in range(len(compacted) - FANOUT + 1):
        window = compacted[i : i + FANOUT]
        span = window[0].span
        if (window[0].first % (span * FANOUT) == 0 and all(p.span == span for p in window)
                and len(_contiguous_runs(window)) == 1 and sum(p.size for p in window) <= target_bytes):
            return window
    return None


def committed_through(loc: StoreLocation, run_id: str) -> int | None:
    """The last committed step of ``run_id`` (its metrics row is the commit point), or None."""
    live = live_pieces(loc, "metrics", run_id).get(run_id, [])
    return live[-1].last if live else None


def compact_run(loc: StoreLocation, run_id: str, *, full: bool,
                target_bytes: int = DEFAULT_TARGET_BYTES) -> list[TableCompaction]:
    """Recover, then merge the committed steps of ``run_id``: ``full`` into files of up to
    ``target_bytes`` (run end, ``rlcadence compact``), else by level (in the run, every N steps)."""
    recover(loc, run_id, sweep=full)
    upto = committed_through(loc, run_id)
    out = []
    for table in STEP_TABLES:
        before = live_pieces(loc, table, run_id).get(run_id, [])
        live, merges = before, 0
        while upto is not None and (group := next_group(live, upto, full=full, target_bytes=target_bytes)):
            merge(loc, table, run_id, group)
            merges += 1
            live = live_pieces(loc, table, run_id).get(run_id, [])
        out.append(TableCompaction(table, run_id, len(before), len(live), sum(p.size for p in before),
                                   sum(p.size for p in live), merges))
    return out


def step_run_ids(loc: StoreLocation) -> list[str]:
    """Runs with rows in a step table."""
    return sorted({d.removeprefix("run_id=") for t in STEP_TABLES for d in loc.list_dirs(t) if d.startswith("run_id=")})
