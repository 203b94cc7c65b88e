"""Who a run is and whether its process still lives: the run record and the heartbeat, in the store.

The CLI records a run (its id and parameters, a ``created`` row of the ``runs`` table) before Prefect
or any model starts, so ``rlcadence resume`` can continue a run killed at any point. The process that
drives a run keeps ``runs/run_id=<id>/_heartbeat.json`` fresh (host, pid, last beat). A run whose holder
is gone is dead: on the same host when its pid no longer lives, elsewhere when its beat is older than
three intervals. Dead runs are then marked crashed (``rlcadence.tasks.crashed``) and may be taken over.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass

from rlcadence.storage import tables
from rlcadence.storage.location import StoreLocation

log = logging.getLogger(__name__)

HEARTBEAT_FILE = "_heartbeat.json"  # "_": ignored by the runs view's `*.parquet` glob and by pyarrow
INTERVAL_ENV = "RLCADENCE_HEARTBEAT_SECONDS"
ALIVE_STATUSES = ("created", "running")  # a run in one of these with a dead holder has crashed


class RunNotRecorded(FileNotFoundError):
    """``resume`` of a run the store has never seen."""


class RunBusy(RuntimeError):
    """Another live process holds the run; a second writer would corrupt it."""


def new_run_id(algorithm: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{algorithm}-{stamp}-{random.Random().getrandbits(24):06x}"


def status_files(loc: StoreLocation, run_id: str) -> list[str]:
    return loc.list_files("runs", f"run_id={run_id}", suffix=".parquet")  # oldest first (timestamped names)


def latest_status(loc: StoreLocation, run_id: str) -> str | None:
    files = status_files(loc, run_id)
    return files[-1].rsplit("-", 1)[-1].removesuffix(".parquet") if files else None


def run_ids(loc: StoreLocation) -> list[str]:
    return [d.removeprefix("run_id=") for d in loc.list_dirs("runs") if d.startswith("run_id=")]


def record_created(loc: StoreLocation, run_id: str, params: dict) -> bool:
    """Record a new run's parameters (its first ``runs`` row); a run already recorded keeps its own."""
    if status_files(loc, run_id):
        return False
    tables.write_run_status(loc, run_id, "created", params | {"run_id": run_id})
    return True


def read_params(loc: StoreLocation, run_id: str) -> dict:
    """The parameters a run was recorded with; :class:`RunNotRecorded` says how to start it instead."""
    if not status_files(loc, run_id):
        raise RunNotRecorded(
            f"no run {run_id!r} in store {loc.uri}: it was never started; start it with "
            f"`rlcadence run --run-id {run_id} --store {loc.uri} [--preset/--config/--set ...]`"
        )
    return tables.read_run_params(loc, run_id)


# -- liveness ---------------------------------------------------------------------------------------
def _interval() -> float:
    return float(os.environ.get(INTERVAL_ENV, "10"))


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks (tells a reused pid apart); None without /proc or if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie is dead; field 22 = starttime


@dataclass(frozen=True)
class Holder:
    """The last heartbeat of a run: which process drove it, and when it last said so."""

    host: str
    pid: int
    pid_start: str | None
    beat_at: float
    interval: float

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), _proc_start(os.getpid()), time.time(), _interval())

    def is_me(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()

    def is_alive(self) -> bool:
        if self.host == socket.gethostname():
            if self.pid_start is not None:
                return _proc_start(self.pid) == self.pid_start
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return time.time() - self.beat_at < 3 * self.interval

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, last beat {time.time() - self.beat_at:.0f}s ago"


def read_holder(loc: StoreLocation, run_id: str) -> Holder | None:
    try:
        raw = json.loads(loc.read_bytes("runs", f"run_id={run_id}", HEARTBEAT_FILE))
    except (OSError, ValueError):
        return None
    return Holder(raw["host"], int(raw["pid"]), raw.get("pid_start"), float(raw["beat_at"]), float(raw["interval"]))


def is_dead(loc: StoreLocation, run_id: str) -> tuple[bool, Holder | None]:
    """Whether ``run_id`` was started and no process drives it now (a run never recorded is not dead)."""
    if latest_status(loc, run_id) not in ALIVE_STATUSES:
        return False, read_holder(loc, run_id)
    holder = read_holder(loc, run_id)
    return holder is None or not holder.is_alive(), holder


class Heartbeat:
    """A daemon thread that rewrites this process's heartbeat of one run every interval."""

    def __init__(self, loc: StoreLocation, run_id: str):
        self.loc, self.run_id = loc, run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rlcadence-heartbeat-{run_id}", daemon=True)

    def beat(self) -> None:
        h = Holder.me()
        body = json.dumps(h.__dict__).encode()
        self.loc.write_bytes(body, "runs", f"run_id={self.run_id}", HEARTBEAT_FILE)

    def _loop(self) -> None:
        while not self._stop.wait(_interval()):
            try:
                self.beat()
            except Exception as e:  # a store hiccup must not kill the run; the next beat tries again
                log.debug("heartbeat of %s failed: %s", self.run_id, type(e).__name__)

    def stop(self) -> None:
        self._stop.set()


_HELD: dict[str, Heartbeat] = {}
_LOCK = threading.Lock()


def hold(loc: StoreLocation, run_id: str) -> Heartbeat:
    """Become the process that drives ``run_id`` (idempotent in one process).

    Raises :class:`RunBusy` when another live process holds it. The first beat is written before this
    returns, so a run record written afterwards always has a heartbeat to judge it by.
    """
    with _LOCK:
        if run_id in _HELD:
            return _HELD[run_id]
        other = read_holder(loc, run_id)
        if other is not None and not other.is_me() and other.is_alive() and latest_status(loc, run_id) in ALIVE_STATUSES:
            raise RunBusy(f"run {run_id!r} is still running ({other.describe()}); stop that process first")
        hb = Heartbeat(loc, run_id)
        hb.beat()
        hb._thread.start()
        _HELD[run_id] = hb
        return hb


def release(run_id: str) -> None:
    with _LOCK:
        hb = _HELD.pop(run_id, None)
    if hb is not None:
        hb.stop()
        hb._thread.join(timeout=30)  # a beat half-written at exit would leave a temp file behind


def sweep_run_temp(loc: StoreLocation, run_id: str) -> int:
    """Remove every temp file a killed writer of ``run_id`` left outside checkpoints (local temp names,
    S3 unfinished multipart uploads): rollouts, metrics, evals, rejected, runs, staging and the final model."""
    n = 0
    for parts in (("rollouts", f"run_id={run_id}"), ("metrics", f"run_id={run_id}"), ("evals", f"run_id={run_id}"),
                  ("rejected", f"run_id={run_id}"), ("runs", f"run_id={run_id}"), ("staging", run_id)):
        n += loc.sweep_temp_files(*parts) + loc.abort_uploads(loc.path(*parts) + "/")
    n += loc.sweep_temp_dirs("models", of=run_id)
    n += loc.sweep_incomplete_dirs("models", only=run_id)
    n += loc.abort_uploads(loc.path("models", run_id) + "/")
    return n
