"""Checkpoints at rest: ``checkpoints/<run>/step-NNNNNN`` (full trainer state) and ``weights-NNNNNN``
(model only: a generator or reference version older than the latest full checkpoint) directories,
published whole or not at all.

What is inside a checkpoint is the trainer's business (:mod:`rlcadence.trainer.checkpoint`); this module
only moves directories in and out of the store, lists them and prunes them.
"""

from __future__ import annotations

from pathlib import Path

from rlcadence.storage.location import StoreLocation

FULL, WEIGHTS = "step", "weights"


def checkpoint_parts(run_id: str, step: int, kind: str = FULL) -> tuple[str, ...]:
    return ("checkpoints", run_id, f"{kind}-{step:06d}")


def publish_checkpoint(loc: StoreLocation, run_id: str, step: int, local_dir: Path, kind: str = FULL) -> str:
    """Publish a local checkpoint directory as checkpoint ``step`` of ``run_id`` in one move."""
    return loc.put_dir(local_dir, *checkpoint_parts(run_id, step, kind))


def local_checkpoint_dir(loc: StoreLocation, run_id: str, step: int, cache_root: Path, kind: str = FULL) -> Path:
    """A local directory holding checkpoint ``step`` (downloaded first when the store is remote)."""
    parts = checkpoint_parts(run_id, step, kind)
    if not loc.dir_complete(*parts):
        raise FileNotFoundError(f"checkpoint {loc.uri_of(*parts)} is missing or incomplete")
    return loc.get_dir(cache_root / run_id / parts[-1], *parts)


def local_weights_dir(loc: StoreLocation, run_id: str, step: int, cache_root: Path) -> Path:
    """A local model directory with the weights of policy version ``step``: full checkpoint, else weights-only."""
    kind = FULL if step in checkpoint_steps(loc, run_id) else WEIGHTS
    return local_checkpoint_dir(loc, run_id, step, cache_root, kind)


def checkpoint_steps(loc: StoreLocation, run_id: str, kind: str = FULL) -> list[int]:
    """Steps with a complete checkpoint of ``kind`` for ``run_id``."""
    steps = []
    for name in loc.list_dirs("checkpoints", run_id):
        if name.startswith(f"{kind}-") and loc.dir_complete("checkpoints", run_id, name):
            steps.append(int(name.removeprefix(f"{kind}-")))
    return sorted(steps)


def has_weights(loc: StoreLocation, run_id: str, step: int) -> bool:
    return any(loc.dir_complete(*checkpoint_parts(run_id, step, k)) for k in (FULL, WEIGHTS))


def prune_checkpoints(loc: StoreLocation, run_id: str, keep_latest: int, pinned: set[int]) -> list[int]:
    """Delete full checkpoints not among the latest ``keep_latest`` nor ``pinned`` (generator/ref versions),
    and weights-only checkpoints that are not pinned. Returns the full checkpoints' steps removed."""
    steps = checkpoint_steps(loc, run_id)
    keep = set(steps[-keep_latest:]) | pinned
    removed = [s for s in steps if s not in keep]
    for s in removed:
        loc.delete_dir(*checkpoint_parts(run_id, s))
    for s in checkpoint_steps(loc, run_id, WEIGHTS):
        if s not in pinned:
            loc.delete_dir(*checkpoint_parts(run_id, s, WEIGHTS))
    return removed


def sweep_checkpoint_temp(loc: StoreLocation, run_id: str) -> int:
    """Remove what a killed checkpoint write of ``run_id`` left: local temp directories
    (``.step-NNNNNN.<uuid>.tmp``), S3 directories without their ``_COMPLETE`` marker and S3 unfinished
    multipart uploads. Returns how many. Only while no process writes the run (resume, retry)."""
    n = loc.sweep_temp_dirs("checkpoints", run_id) + loc.sweep_temp_files("checkpoints", run_id)
    n += loc.sweep_incomplete_dirs("checkpoints", run_id)
    return n + loc.abort_uploads(loc.path("checkpoints", run_id) + "/")
