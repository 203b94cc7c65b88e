"""Compaction killed with SIGKILL at every point of its protocol, on local disk and on S3: after each kill
the rlcadence views, resume's committed steps and replay's step reads are exact (no row missing, none
twice), and the next ``rlcadence compact`` finishes the interrupted merge, after which a plain DuckDB
``read_parquet`` glob is exact too. The store is written by the real writers (rollouts step files and
metrics rows), part of it already compacted the way a run does it every N steps."""

from __future__ import annotations

import signal

import duckdb
import pyarrow as pa
import pytest

from rlcadence.storage import compaction, layout, tables
from rlcadence.storage.query import query
from rlcadence.storage.s3 import configure_duckdb
from rlcadence.storage.stores import open_location
from tests.integration.helpers import run_cli

STEPS, ROWS, EVERY = 30, 8, 10
LAST = STEPS - 1  # the final merge covers steps 0..29: its fail points are armed at step 29

LOCAL_POINTS = ["compact-start", "write:compacted", "compact-written", "compact-deleting", "compact-deleted",
                "compact-published"]
S3_POINTS = [*LOCAL_POINTS[:-1], "compact-copied", "compact-published"]  # S3 publishes by copy, then delete


def _rollouts(step: int) -> pa.Table:
    return pa.Table.from_pylist([{"run_id": "r", "step": step, "sample_index": i, "reward": float(step * ROWS + i)}
                                 for i in range(ROWS)], schema=pa.schema([("run_id", pa.string()), ("step", pa.int64()),
                                                                          ("sample_index", pa.int32()), ("reward", pa.float64())]))


def _write_run(loc) -> None:
    """30 committed steps; compacted every 10 as the run does, so the final merge takes both kinds of file."""
    tables.write_run_status(loc, "r", "completed", {"keep_checkpoints": 2})
    for step in range(STEPS):
        tables.write_step_table(loc, "rollouts", "r", step, _rollouts(step))
        extra = {"eval_accuracy": step / 100} if step % 5 == 0 else {}  # metrics files differ in columns
        tables.write_metrics(loc, "r", step, {"reward_mean": step / 10, **extra})
        if step in (9, 19):
            compaction.compact_run(loc, "r", full=False)


EXPECTED_ROLLOUTS = (STEPS * ROWS, STEPS * ROWS, sum(range(STEPS * ROWS)))


def _views_exact(loc) -> None:
    """What rlcadence reads: the SQL views, resume's committed steps, replay's rows of one step."""
    rows = query(loc, "SELECT count(*), count(DISTINCT (step, sample_index)), sum(reward) FROM rollouts")[1]
    assert rows == [(*EXPECTED_ROLLOUTS[:2], float(EXPECTED_ROLLOUTS[2]))]
    m = query(loc, "SELECT count(*), count(DISTINCT step), count(eval_accuracy), sum(reward_mean) FROM metrics")[1]
    assert m == [(STEPS, STEPS, STEPS // 5, pytest.approx(sum(range(STEPS)) / 10))]
    assert tables.committed_steps(loc, "metrics", "r") == list(range(STEPS))
    assert tables.committed_steps(loc, "rollouts", "r") == list(range(STEPS))
    for step in (3, 25):
        got = tables.read_step_table(loc, "rollouts", "r", step)
        assert got.column("reward").to_pylist() == [float(step * ROWS + i) for i in range(ROWS)]


def _glob(loc) -> tuple:
    """A plain DuckDB over the files, as the README says, without rlcadence."""
    con = duckdb.connect()
    if not loc.is_local:
        configure_duckdb(con, loc)
    glob = loc.uri_of("rollouts", "**", "*.parquet")
    return con.sql(f"SELECT count(*), count(DISTINCT (step, sample_index)), sum(reward)::BIGINT "
                   f"FROM read_parquet('{glob}')").fetchone()


def _kill_and_finish(store: str, point: str) -> None:
    loc = open_location(store)
    _write_run(loc)
    _views_exact(loc)
    assert _glob(loc) == EXPECTED_ROLLOUTS

    killed = run_cli("compact", "r", "--store", store, env={"RLCADENCE_CRASH_AT": f"{point}:{LAST}"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr[-2000:]
    pieces = layout.list_pieces(loc, "rollouts", "r")[0]["r"]
    pending = [p for p in pieces if p.kind == "pending"]
    if point in ("compact-start", "write:compacted"):
        assert not pending and len(pieces) == 12  # 2 compacted + 10 step files, untouched
    else:
        assert [(p.first, p.last) for p in pending] == ([] if point == "compact-published" else [(0, LAST)])
    _views_exact(loc)
    if point not in ("compact-deleting", "compact-deleted"):  # before the deletions or after the publish
        assert _glob(loc) == EXPECTED_ROLLOUTS  # (a glob misses the steps being compacted only in between)

    done = run_cli("compact", "r", "--store", store)
    assert done.returncode == 0, done.stderr[-2000:]
    for table in layout.STEP_TABLES:
        names = [p.path.rsplit("/", 1)[-1] for p in layout.list_pieces(loc, table, "r")[0]["r"]]
        assert names == [layout.compacted_name(0, LAST)], (table, names)
        if loc.is_local:  # (SeaweedFS's filer keeps empty folders of deleted objects: no bytes, no rows)
            assert loc.list_dirs(*layout.run_dir(table, "r")) == [], "empty step directories left"
    _views_exact(loc)
    assert _glob(loc) == EXPECTED_ROLLOUTS
    assert not [f for f in _all_files(loc) if f.rsplit("/", 1)[-1].startswith(".")], "temp or pending left"


def _all_files(loc) -> list[str]:
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(loc.root, recursive=True)
    return [i.path for i in loc.fs.get_file_info(sel) if i.type == pafs.FileType.File]


@pytest.mark.parametrize("point", LOCAL_POINTS)
def test_sigkill_during_compaction_local(tmp_path, point):
    _kill_and_finish(str(tmp_path / "store"), point)


@pytest.mark.parametrize("point", S3_POINTS)
def test_sigkill_during_compaction_s3(s3_env, point):
    _kill_and_finish(s3_env, point)


def test_compact_refuses_a_running_run(tmp_path):
    """A live run compacts itself; `rlcadence compact RUN` of it is refused in one line, nothing touched."""
    import subprocess
    import sys

    store = str(tmp_path / "store")
    loc = open_location(store)
    _write_run(loc)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rlcadence.storage.stores import open_location; from rlcadence.storage import "
        "run_records, tables; loc = open_location(sys.argv[1]); run_records.hold(loc, 'r'); "
        "tables.write_run_status(loc, 'r', 'running', {}); print('ready', flush=True); time.sleep(120)"), store],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = sorted(_all_files(loc))
        refused = run_cli("compact", "r", "--store", store)
        assert refused.returncode == 2 and "still running" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1
        everything = run_cli("compact", "--store", store)  # all runs: the running one is skipped, said so
        assert everything.returncode == 0 and "r: skipped" in everything.stdout, everything.stdout
        assert sorted(_all_files(loc)) == before
    finally:
        holder.kill()
        holder.wait()


def test_in_run_compaction_leaves_the_writers_files_alone(tmp_path):
    """The in-run merge runs on a thread beside the run's writer: a temp file the writer is filling and the
    step directory it just made must survive it (a full compaction, with nothing writing, sweeps both)."""
    loc = open_location(str(tmp_path / "store"))
    _write_run(loc)
    writing = tmp_path / "store" / "rollouts" / "run_id=r" / f"step={STEPS}"
    writing.mkdir()
    temp = writing / ".part-0.parquet.0123456789abcdef0123456789abcdef.tmp"
    temp.write_bytes(b"half a file")
    compaction.compact_run(loc, "r", full=False)
    assert temp.read_bytes() == b"half a file"
    _views_exact(loc)
    compaction.compact_run(loc, "r", full=True)
    assert not writing.exists()
    _views_exact(loc)


def test_background_writer_raises_a_failed_job_at_the_next_wait():
    from rlcadence.run_state import BackgroundWriter

    jobs = BackgroundWriter("test")
    jobs.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        jobs.wait()
    assert jobs.wait() >= 0.0  # reaped once: the next wait does not raise it again
    jobs.submit(lambda: None)
    jobs.close()
    assert jobs.last_write_s is not None and jobs.last_cpu_s is not None
