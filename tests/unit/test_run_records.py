"""Run records, heartbeats and temp sweeps on a local store (real files, real processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlcadence.storage import run_records, tables
from rlcadence.storage.checkpoints import checkpoint_steps, publish_checkpoint, sweep_checkpoint_temp
from rlcadence.storage.location import open_local_location


@pytest.fixture
def loc(tmp_path):
    return open_local_location(str(tmp_path / "store"))


def test_record_keeps_the_first_parameters(loc):
    assert run_records.record_created(loc, "r1", {"steps": 4})
    assert not run_records.record_created(loc, "r1", {"steps": 9})  # a second `run --run-id r1` keeps them
    assert run_records.read_params(loc, "r1") == {"steps": 4, "run_id": "r1"}
    assert run_records.latest_status(loc, "r1") == "created"
    assert run_records.run_ids(loc) == ["r1"]


def test_resume_of_a_never_recorded_run_says_how_to_start_it(loc):
    with pytest.raises(run_records.RunNotRecorded) as e:
        run_records.read_params(loc, "nope")
    msg = str(e.value)
    assert "\n" not in msg and "never started" in msg and "rlcadence run --run-id nope" in msg


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_holder(loc, run_id: str, **fields) -> None:
    h = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": run_records._proc_start(os.getpid()),
         "beat_at": time.time(), "interval": 10.0} | fields
    loc.write_bytes(json.dumps(h).encode(), "runs", f"run_id={run_id}", run_records.HEARTBEAT_FILE)


def test_liveness_by_pid_on_this_host_and_by_beat_age_elsewhere(loc):
    run_records.record_created(loc, "r", {})
    assert run_records.is_dead(loc, "r")[0]  # recorded, never beat: nothing drives it
    _write_holder(loc, "r")
    assert not run_records.is_dead(loc, "r")[0]  # this very process
    _write_holder(loc, "r", pid=_dead_pid(), pid_start="1")
    assert run_records.is_dead(loc, "r")[0]
    _write_holder(loc, "r", pid=os.getpid(), pid_start="12345")  # a reused pid: another start time
    assert run_records.is_dead(loc, "r")[0]
    _write_holder(loc, "r", host="elsewhere", beat_at=time.time() - 29)
    assert not run_records.is_dead(loc, "r")[0]  # 29 s < 3 intervals
    _write_holder(loc, "r", host="elsewhere", beat_at=time.time() - 31)
    assert run_records.is_dead(loc, "r")[0]
    tables.write_run_status(loc, "r", "completed", {})
    assert not run_records.is_dead(loc, "r")[0]  # a finished run is not a crashed one


def test_hold_refuses_a_run_another_live_process_drives(loc):
    run_records.record_created(loc, "busy", {})
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_holder(loc, "busy", pid=sleeper.pid, pid_start=run_records._proc_start(sleeper.pid))
        with pytest.raises(run_records.RunBusy, match=f"pid {sleeper.pid}"):
            run_records.hold(loc, "busy")
    finally:
        sleeper.kill()
        sleeper.wait()
    hb = run_records.hold(loc, "busy")  # its holder is gone: the run may be taken over
    try:
        assert run_records.read_holder(loc, "busy").is_me()
        assert run_records.hold(loc, "busy") is hb  # idempotent within one process
    finally:
        run_records.release("busy")


def test_sweeps_remove_every_temp_artifact_and_nothing_else(loc, tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"w" * 10)
    publish_checkpoint(loc, "r", 1, src)
    root = Path(loc.root)
    leftovers = [
        root / "checkpoints/r/.step-000002.abc.tmp/model.safetensors",  # killed put_dir
        root / "rollouts/run_id=r/step=2/.part-0.parquet.abc.tmp",
        root / "metrics/run_id=r/step=2/.part-0.parquet.abc.tmp",
        root / "staging/r/step=2/.generated.parquet.abc.tmp",
        root / "runs/run_id=r/.x-running.parquet.abc.tmp",
        root / f"models/.r.{'a' * 32}.tmp/model.safetensors",
    ]
    kept = [root / f"models/.other.{'a' * 32}.tmp/x", root / f"models/.r.b.{'a' * 32}.tmp/x",  # other runs
            root / "rollouts/run_id=other/step=0/.p.abc.tmp"]
    for p in leftovers + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    assert sweep_checkpoint_temp(loc, "r") == 1
    assert run_records.sweep_run_temp(loc, "r") == 5
    assert [p for p in leftovers if p.exists() or p.parent.name.endswith(".tmp") and p.parent.exists()] == []
    assert all(p.exists() for p in kept)
    assert checkpoint_steps(loc, "r") == [1]
