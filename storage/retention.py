"""``rlcadence gc``: what a store no longer needs, dropped run by run, never from a running run.

Per recorded run, by what its record and heartbeat say (:mod:`rlcadence.storage.run_records`):

* running (alive status, live holder): untouched;
* completed: staging, temp files (local temp names, S3 unfinished uploads and incomplete directories),
  an interrupted compaction's leftovers, weights-only checkpoints and full checkpoints beyond the latest
  ``keep_checkpoints`` (the run's own setting unless given): the run is over, its final model is in
  ``models/<run>``;
* stopped but resumable (failed, crashed, or alive status with a dead holder): only what a resume would
  drop anyway (temp files, staging of committed steps, compaction leftovers), so it still resumes.

Each run is held (heartbeat) while it is collected, so a resume started meanwhile is refused, not raced.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs

from rlcadence.storage import run_records
from rlcadence.storage.checkpoints import (
    FULL,
    WEIGHTS,
    checkpoint_parts,
    checkpoint_steps,
    sweep_checkpoint_temp,
)
from rlcadence.storage.compaction import committed_through, recover
from rlcadence.storage.location import StoreLocation


@dataclass(frozen=True)
class Collected:
    run_id: str
    status: str
    action: str  # "skipped: running", "completed: ...", "stopped: ..."
    bytes_freed: int


def _bytes(loc: StoreLocation, run_id: str) -> int:
    """Bytes of everything ``run_id`` owns in the store (hidden and temp files included)."""
    total = 0
    bases = [("staging", run_id), ("checkpoints", run_id), ("rollouts", f"run_id={run_id}"),
             ("metrics", f"run_id={run_id}"), ("rejected", f"run_id={run_id}"), ("runs", f"run_id={run_id}")]
    for parts in bases:
        sel = pafs.FileSelector(loc.path(*parts), recursive=True, allow_not_found=True)
        total += sum(i.size or 0 for i in loc.fs.get_file_info(sel)  # (the heartbeat gc itself writes aside)
                     if i.type == pafs.FileType.File and i.base_name != run_records.HEARTBEAT_FILE)
    sel = pafs.FileSelector(loc.path("models"), recursive=True, allow_not_found=True)
    for i in loc.fs.get_file_info(sel):
        top = posixpath.relpath(i.path, loc.path("models")).split("/", 1)[0]
        if i.type == pafs.FileType.File and (top == run_id or top.startswith(f".{run_id}.")):
            total += i.size or 0
    return total


def _drop_resumable_leftovers(loc: StoreLocation, run_id: str) -> None:
    run_records.sweep_run_temp(loc, run_id)
    sweep_checkpoint_temp(loc, run_id)
    recover(loc, run_id)
    last = committed_through(loc, run_id)
    for name in loc.list_dirs("staging", run_id):
        if name.startswith("step=") and last is not None and int(name.removeprefix("step=")) <= last:
            loc.delete_dir("staging", run_id, name)


def _drop_finished(loc: StoreLocation, run_id: str, keep: int) -> None:
    _drop_resumable_leftovers(loc, run_id)
    loc.delete_dir("staging", run_id)
    steps = checkpoint_steps(loc, run_id, FULL)
    for s in steps[:-keep] if keep else steps:
        loc.delete_dir(*checkpoint_parts(run_id, s, FULL))
    for s in checkpoint_steps(loc, run_id, WEIGHTS):
        loc.delete_dir(*checkpoint_parts(run_id, s, WEIGHTS))


def collect_run(loc: StoreLocation, run_id: str, keep_checkpoints: int | None = None) -> Collected:
    status = run_records.latest_status(loc, run_id) or "unknown"
    dead, holder = run_records.is_dead(loc, run_id)
    if status in run_records.ALIVE_STATUSES and not dead:
        return Collected(run_id, status, f"skipped: running ({holder.describe() if holder else 'no heartbeat'})", 0)
    try:
        run_records.hold(loc, run_id)
    except run_records.RunBusy as e:
        return Collected(run_id, status, f"skipped: {e}", 0)
    try:
        before = _bytes(loc, run_id)
        if status == "completed":
            keep = keep_checkpoints if keep_checkpoints is not None else _keep_of(loc, run_id)
            _drop_finished(loc, run_id, keep)
            action = f"completed: staging, temp files, checkpoints beyond the latest {keep}"
        else:
            _drop_resumable_leftovers(loc, run_id)
            action = "stopped (resumable): temp files and staging of committed steps only"
        return Collected(run_id, status, action, max(before - _bytes(loc, run_id), 0))
    finally:
        run_records.release(run_id)


def _keep_of(loc: StoreLocation, run_id: str) -> int:
    try:
        return int(run_records.read_params(loc, run_id).get("keep_checkpoints", 2))
    except (FileNotFoundError, TypeError, ValueError):
        return 2


def collect(loc: StoreLocation, keep_checkpoints: int | None = None) -> list[Collected]:
    """:func:`collect_run` for every recorded run of the store."""
    return [collect_run(loc, r, keep_checkpoints) for r in run_records.run_ids(loc)]
