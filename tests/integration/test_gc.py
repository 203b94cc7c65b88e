"""`rlcadence gc` on a store with a running run, a completed run and a failed (resumable) run: the running
run is not touched (not one byte), the completed one loses staging, temp files, a compaction's leftover and
the checkpoints beyond its kept one, the failed one only what its resume would drop; the bytes reported
freed are the bytes that went."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from rlcadence.storage import compaction, layout, tables
from rlcadence.storage.checkpoints import FULL, WEIGHTS, checkpoint_steps, publish_checkpoint
from rlcadence.storage.stores import open_location
from tests.integration.helpers import run_cli, sql


def _populate(loc, tmp: Path, run_id: str, status: str, committed: int) -> None:
    tables.write_run_status(loc, run_id, status, {"keep_checkpoints": 1})
    for step in range(committed):
        tables.write_step_table(loc, "rollouts", run_id, step, pa.Table.from_pylist([{"run_id": run_id, "step": step, "reward": 1.0}]))
        tables.write_metrics(loc, run_id, step, {"reward_mean": 1.0})
    src = tmp / f"ckpt-{run_id}"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"w" * 5000)
    for s in (0, 2, 4):
        publish_checkpoint(loc, run_id, s, src)
    publish_checkpoint(loc, run_id, 1, src, WEIGHTS)
    for s in (committed - 1, committed):  # a committed step's staging (a kill inside commit) and the next one's
        loc.write_bytes(b"g" * 700, "staging", run_id, f"step={s}", "generated.parquet")
    Path(loc.path("rollouts", f"run_id={run_id}", "step=0", ".part-0.parquet.dead.tmp")).write_bytes(b"t" * 300)


def _files(root: Path, run_id: str) -> dict[str, bytes]:
    """Every file of ``run_id`` (its heartbeat aside: its holder rewrites it) with its bytes."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and (f"/{run_id}/" in f"/{rel}" or f"run_id={run_id}/" in rel) and not rel.endswith("_heartbeat.json"):
            out[rel] = p.read_bytes()
    return out


def _size(files: dict[str, bytes]) -> int:
    return sum(len(b) for b in files.values())


def test_gc_keeps_the_running_run_and_collects_the_finished_ones(tmp_path):
    store = tmp_path / "store"
    loc = open_location(str(store))
    for run_id, status in (("live", "running"), ("done", "completed"), ("broke", "failed")):
        _populate(loc, tmp_path, run_id, status, committed=3)
    compaction.compact_run(loc, "done", full=True)  # and a published merge's pending copy left behind:
    Path(loc.path("rollouts", "run_id=done", layout.pending_name(0, 2))).write_bytes(
        Path(loc.path("rollouts", "run_id=done", layout.compacted_name(0, 2))).read_bytes())

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rlcadence.storage.stores import open_location; from rlcadence.storage import "
        "run_records, tables; loc = open_location(sys.argv[1]); run_records.hold(loc, 'live'); "
        "tables.write_run_status(loc, 'live', 'running', {}); print('ready', flush=True); time.sleep(120)"), str(store)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = {r: _files(store, r) for r in ("live", "done", "broke")}
        gc = run_cli("gc", "--store", str(store))
        assert gc.returncode == 0, gc.stderr
        after = {r: _files(store, r) for r in ("live", "done", "broke")}

        assert after["live"] == before["live"], "gc touched a running run"
        assert re.search(r"live\s+running\s+skipped: running", gc.stdout), gc.stdout

        assert checkpoint_steps(loc, "done", FULL) == [4] and checkpoint_steps(loc, "done", WEIGHTS) == []
        assert not (store / "staging" / "done").exists()
        assert not [f for f in after["done"] if f.rsplit("/", 1)[-1].startswith(".")], "temp file or pending copy left"
        assert sql(str(store), "SELECT count(*) FROM rollouts WHERE run_id = 'done'") == [(3,)]

        assert checkpoint_steps(loc, "broke", FULL) == [0, 2, 4] and checkpoint_steps(loc, "broke", WEIGHTS) == [1]
        assert sorted(p.name for p in (store / "staging" / "broke").iterdir()) == ["step=3"]  # step 2 was committed
        assert not [f for f in after["broke"] if f.endswith(".tmp")]
        assert tables.committed_steps(loc, "metrics", "broke") == [0, 1, 2]

        freed = {r: _size(before[r]) - _size(after[r]) for r in before}
        assert freed["done"] > 3 * 5000 and freed["broke"] == 700 + 300
        reported = int(re.search(r"freed ([\d,]+) bytes", gc.stdout)[1].replace(",", ""))
        assert reported == freed["done"] + freed["broke"], (gc.stdout, freed)
    finally:
        holder.kill()
        holder.wait()

    # Its process gone, the run that was live is stopped, not finished: only what a resume drops goes.
    again = run_cli("gc", "--store", str(store))
    assert again.returncode == 0, again.stderr
    assert checkpoint_steps(loc, "live", FULL) == [0, 2, 4]
    assert sorted(p.name for p in (store / "staging" / "live").iterdir()) == ["step=3"]
