"""Which files hold a step table's rows: step files, compacted files, and a compaction in flight.

A step table (``rollouts``, ``metrics``) of run R lives under ``<table>/run_id=R/``::

    step=<t>/part-0.parquet                      one step, as the run writes it
    compacted-<a:08d>-<b:08d>.parquet            steps a..b, every one of them, in step order
    .compacted-<a:08d>-<b:08d>.parquet.pending   a complete copy of a..b that a compaction is publishing

Why three kinds: no store can swap many files for one atomically (S3 has no rename). A compaction writes
the pending file first, whole, then deletes the files it replaces, then publishes the pending file under
its visible name (:mod:`rlcadence.storage.compaction`). The pending name ends in ``.pending`` and starts
with a dot, so ``*.parquet`` globs (DuckDB's, pyarrow's) never see it; rlcadence's readers do, and at every
moment take each step from exactly one file (:func:`resolve`): a compacted or pending file covering it
(the widest wins), else its step file. So queries, resume and replay see no gap and no duplicate whatever
point a compaction was killed at; a plain glob sees a gap for the steps being compacted, only between the
deletions and the publish, until the next compaction or run finishes the interrupted one.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import pyarrow.fs as pafs

from rlcadence.storage.location import StoreLocation

STEP_TABLES = ("rollouts", "metrics")
STEP_FILE = re.compile(r"step=(\d+)/part-0\.parquet")
COMPACTED = re.compile(r"compacted-(\d{8})-(\d{8})\.parquet")
PENDING = re.compile(r"\.compacted-(\d{8})-(\d{8})\.parquet\.pending")
LIST_ATTEMPTS = 3  # a listing taken while a compaction deletes can miss steps: re-listed (see live_pieces)


class LayoutError(RuntimeError):
    """Files of a run overlap in a way no compaction produces (a file copied in by hand, say)."""


def compacted_name(first: int, last: int) -> str:
    return f"compacted-{first:08d}-{last:08d}.parquet"


def pending_name(first: int, last: int) -> str:
    return f".{compacted_name(first, last)}.pending"


def run_dir(table: str, run_id: str) -> tuple[str, str]:
    return (table, f"run_id={run_id}")


@dataclass(frozen=True)
class Piece:
    """One file of a run's step table and the steps it holds (``first..last``, all of them)."""

    path: str  # relative to the store root
    first: int
    last: int
    size: int
    kind: str  # "step", "compacted" or "pending"

    @property
    def span(self) -> int:
        return self.last - self.first + 1

    def covers(self, other: Piece) -> bool:
        return self.first <= other.first and other.last <= self.last


def list_pieces(loc: StoreLocation, table: str, run_id: str | None = None) -> tuple[dict[str, list[Piece]], list[str]]:
    """Every step, compacted and pending file of ``table`` by run (all runs, or ``run_id``), plus the paths
    of other visible ``.parquet`` files (kept as they are: not ours to judge). Temp files are skipped."""
    base = loc.path(*run_dir(table, run_id)) if run_id else loc.path(table)
    infos = loc.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    runs: dict[str, list[Piece]] = {}
    others = []
    table_root = loc.path(table)
    for i in infos:
        if i.type != pafs.FileType.File:
            continue
        rel_table = posixpath.relpath(i.path, table_root)
        rel = posixpath.relpath(i.path, loc.root)
        head, _, rest = rel_table.partition("/")
        piece = None
        if head.startswith("run_id=") and rest:
            if m := STEP_FILE.fullmatch(rest):
                piece = Piece(rel, int(m[1]), int(m[1]), i.size, "step")
            elif m := COMPACTED.fullmatch(rest):
                piece = Piece(rel, int(m[1]), int(m[2]), i.size, "compacted")
            elif m := PENDING.fullmatch(rest):
                piece = Piece(rel, int(m[1]), int(m[2]), i.size, "pending")
        if piece is not None:
            runs.setdefault(head.removeprefix("run_id="), []).append(piece)
        elif i.base_name.endswith(".parquet") and not i.base_name.startswith("."):
            others.append(rel)
    return runs, sorted(others)


def resolve(pieces: list[Piece]) -> list[Piece]:
    """The files a reader takes, one per step, in step order.

    Compacted and pending files cover their steps (a pending copy of a published file is a leftover and
    is skipped); the widest first, since a merge of compacted files is wider than each of them. Step files
    fill in the steps no such file covers.
    """
    ranges: dict[tuple[int, int], Piece] = {}
    for p in pieces:
        if p.kind != "step" and (ranges.get((p.first, p.last)) is None or p.kind == "compacted"):
            ranges[(p.first, p.last)] = p
    chosen: list[Piece] = []
    for p in sorted(ranges.values(), key=lambda p: (-p.span, p.first)):
        if any(c.covers(p) for c in chosen):
            continue
        clash = [c for c in chosen if c.first <= p.last and p.first <= c.last]
        if clash:
            raise LayoutError(f"{p.path} overlaps {clash[0].path} without covering it")
        chosen.append(p)
    for p in pieces:
        if p.kind == "step" and not any(c.covers(p) for c in chosen):
            chosen.append(p)
    return sorted(chosen, key=lambda p: p.first)


def steps_of(live: list[Piece]) -> list[int]:
    return [s for p in live for s in range(p.first, p.last + 1)]


def _has_hole(live: list[Piece]) -> bool:
    return any(b.first != a.last + 1 for a, b in zip(live, live[1:], strict=False))


def _listed(loc: StoreLocation, table: str, run_id: str | None) -> tuple[dict[str, list[Piece]], list[str]]:
    """:func:`resolve` per run, plus the other files. A run's steps are contiguous; a hole means the listing
    raced a compaction (it listed before the pending file appeared, then missed deleted step files), so
    it is taken again."""
    for _ in range(LIST_ATTEMPTS):
        runs, others = list_pieces(loc, table, run_id)
        live = {r: resolve(ps) for r, ps in runs.items()}
        if not any(_has_hole(ps) for ps in live.values()):
            break
    return live, others


def live_pieces(loc: StoreLocation, table: str, run_id: str | None = None) -> dict[str, list[Piece]]:
    """The files a reader takes, by run, each step once."""
    return _listed(loc, table, run_id)[0]


def live_files(loc: StoreLocation, table: str) -> list[str]:
    """Paths (relative to the root) of the files that hold ``table``'s rows, each row once."""
    if table not in STEP_TABLES:
        return loc.list_files(table, suffix=".parquet")
    live, others = _listed(loc, table, None)
    return sorted([p.path for ps in live.values() for p in ps] + others)


def covering(loc: StoreLocation, table: str, run_id: str, step: int) -> Piece | None:
    """The file a reader takes step ``step`` of ``run_id`` from, if the step is there."""
    for p in live_pieces(loc, table, run_id).get(run_id, []):
        if p.first <= step <= p.last:
            return p
    return None
