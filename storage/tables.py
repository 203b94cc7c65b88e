"""The tables of a store: ``rollouts``, ``metrics``, ``runs`` and ``evals`` (plus ``rejected`` dataset rows).

Layout (hive partitions, one file per (run, step), so a rewrite after a crash replaces, never duplicates)::

    rollouts/run_id=<id>/step=<t>/part-0.parquet       (compacted later: rollouts/run_id=<id>/compacted-<a>-<b>.parquet,
    metrics/run_id=<id>/step=<t>/part-0.parquet         see storage/layout.py and storage/compaction.py)
    evals/run_id=<id>/step=<t>/part-0.parquet          (step = policy version: updates applied)
    runs/run_id=<id>/<updated_at>-<status>.parquet     (append-only; the newest row wins)

Partition columns are also stored inside each file, so a single file is self-describing.
"""

from __future__ import annotations

import io
import json
import posixpath
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from rlcadence.storage.location import StoreLocation

TABLES = ("rollouts", "metrics", "runs", "rejected", "evals")

ROLLOUT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("policy_version", pa.int64()),
        ("environment", pa.string()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("prompt", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),  # the prompt as the engine saw it (chat template, BOS)
        ("gold", pa.string()),
        ("completion", pa.string()),
        ("completion_tokens", pa.int32()),
        ("token_ids", pa.list_(pa.int32())),
        ("token_logprobs", pa.list_(pa.float32())),
        ("logprob_sum", pa.float64()),
        ("logprob_mean", pa.float64()),
        ("finish_reason", pa.string()),
        ("reward", pa.float64()),
        ("verifier_detail", pa.string()),
        ("advantage", pa.float64()),
        ("kept", pa.bool_()),
        ("generate_seconds", pa.float64()),
        ("score_seconds", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

# One row per (run, step, eval set, prompt, sample): what "which problems did run A fix that run B did not"
# joins on. ``model`` names the weights evaluated (``run:<id>@<step>`` or a model directory), so the rows of
# a run's own evaluation and of `rlcadence eval` on its checkpoint (another run_id) can be compared.
EVALS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("model", pa.string()),
        ("eval_set", pa.string()),
        ("environment", pa.string()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("prompt", pa.string()),
        ("gold", pa.string()),
        ("completion", pa.string()),
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("truncated", pa.bool_()),
        ("reward", pa.float64()),
        ("correct", pa.bool_()),  # reward >= 1; NULL for non-verifiable sets
        ("verifier_detail", pa.string()),
        ("answer_key", pa.string()),  # the normalised answer maj@k votes with; NULL for non-verifiable sets
        ("seed", pa.int64()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def step_file(table: str, run_id: str, step: int) -> tuple[str, ...]:
    return (table, f"run_id={run_id}", f"step={step}", "part-0.parquet")


# The step tables this process wrote last, by (store, file): the in-run compaction merges them without
# reading its own files back. Bounded by bytes; a table is cached only once its file is written.
_RECENT: OrderedDict[tuple[str, str], tuple[pa.Table, int]] = OrderedDict()  # (table, its nbytes)
_RECENT_BYTES = [0]
_RECENT_MAX_BYTES = 256 * 2**20
_RECENT_LOCK = threading.Lock()  # the in-run compaction reads it from its own thread


def write_step_table(loc: StoreLocation, table: str, run_id: str, step: int, data: pa.Table) -> str:
    """Write (or atomically replace) the one file of ``table`` for (run, step)."""
    from rlcadence import faults

    payload = table_to_parquet_bytes(data)
    faults.maybe_crash_mid_write(loc, step_file(table, run_id, step), payload, table=table, step=step)
    uri = loc.write_bytes(payload, *step_file(table, run_id, step))
    key = (loc.uri, posixpath.join(*step_file(table, run_id, step)))
    with _RECENT_LOCK:
        _forget(key)
        _RECENT[key] = (data, data.nbytes)
        _RECENT_BYTES[0] += data.nbytes
        while _RECENT_BYTES[0] > _RECENT_MAX_BYTES and len(_RECENT) > 1:
            _forget(next(iter(_RECENT)))
    return uri


def _forget(key: tuple[str, str]) -> None:
    old = _RECENT.pop(key, None)
    if old is not None:
        _RECENT_BYTES[0] -= old[1]


def recently_written(loc: StoreLocation, path: str) -> pa.Table | None:
    """The table this process last wrote to ``path`` (relative to the root) of ``loc``, if still cached."""
    with _RECENT_LOCK:
        hit = _RECENT.get((loc.uri, path))
    return hit[0] if hit is not None else None


def write_metrics(loc: StoreLocation, run_id: str, step: int, metrics: dict) -> str:
    row = {"run_id": run_id, "step": step, "created_at": utcnow(), **metrics}
    return write_step_table(loc, "metrics", run_id, step, pa.Table.from_pylist([row]))


def write_evals(loc: StoreLocation, run_id: str, step: int, rows: list[dict]) -> str:
    """The evals rows of (run, step): every eval set's samples in one file, like the other per-step tables."""
    return write_step_table(loc, "evals", run_id, step, pa.Table.from_pylist(rows, schema=EVALS_SCHEMA))


def write_run_status(loc: StoreLocation, run_id: str, status: str, params: dict, **extra) -> str:
    """Append a status row for ``run_id``; the ``runs`` view shows the newest one."""
    now = utcnow()
    row = {
        "run_id": run_id,
        "status": status,
        "params": json.dumps(params, sort_keys=True, default=str),
        "updated_at": now,
        **extra,
    }
    name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{time.monotonic_ns() % 1000:03d}-{status}.parquet"
    return loc.write_bytes(table_to_parquet_bytes(pa.Table.from_pylist([row])), "runs", f"run_id={run_id}", name)


def read_run_params(loc: StoreLocation, run_id: str) -> dict:
    """The parameters a run was started with (from its first status row)."""
    files = loc.list_files("runs", f"run_id={run_id}", suffix=".parquet")
    if not files:
        raise FileNotFoundError(f"no run {run_id!r} in store {loc.uri}")
    first = pq.read_table(io.BytesIO(loc.read_bytes(files[0])))
    return json.loads(first.column("params")[0].as_py())


def read_step_table(loc: StoreLocation, table: str, run_id: str, step: int) -> pa.Table:
    """The rows of (run, step): from its step file (one GET: the train stage's case), else from the
    compacted or pending file that holds the step (a replay of compacted steps)."""
    from rlcadence.storage.layout import covering

    try:
        return pq.read_table(io.BytesIO(loc.read_bytes(*step_file(table, run_id, step))))
    except OSError:  # FileNotFoundError locally; on S3 a StoreError saying the key is missing
        piece = covering(loc, table, run_id, step)
        if piece is None or piece.kind == "step":
            raise
    import pyarrow.dataset as ds

    data = ds.dataset(loc.path(piece.path), format="parquet", filesystem=loc.fs)
    return data.to_table(filter=ds.field("step") == step)


def committed_steps(loc: StoreLocation, table: str, run_id: str) -> list[int]:
    """Steps of ``run_id`` whose ``table`` rows are complete and visible (step files or compacted)."""
    from rlcadence.storage.layout import live_pieces, steps_of

    return steps_of(live_pieces(loc, table, run_id).get(run_id, []))
