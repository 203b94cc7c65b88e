"""The RL flow's data-parallel train stage: the flow process is rank 0, ranks 1..N-1 are worker processes
spawned once per run (torch.multiprocessing, ``spawn``), each holding its model replica across steps.

Commands travel on a pipe per worker, not on the process group: a worker waits for the next step as long
as generation and evaluation take, without a collective timing out. Once a command is sent, every rank
runs the same :mod:`rlcadence.trainer.replica` function, whose collectives carry ``train_timeout_s``; rank 0
then waits for each worker's answer with the same deadline, watching the processes. A worker that dies,
raises or stays silent fails the step with an error naming its rank, and the whole group is torn down
(a half-done collective cannot be resumed): the next ``policy_at`` spawns a new group and rebuilds the
policy from the last checkpoint plus a replay on the ranks.

One machine only: the workers are children of the flow process (rendezvous through a file store in a
temporary directory). Several machines need torchrun over ``rlcadence.trainer.distributed`` (README).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlcadence.config import RLConfig
from rlcadence.trainer import distributed as D
from rlcadence.trainer.replica import Replica, load_replica, train_replica


class TrainGroupError(RuntimeError):
    """A data-parallel train step could not finish on every rank (the message names the rank)."""


def rank_device(cfg: RLConfig, rank: int) -> str:
    """Rank ``r`` trains on ``cuda:r`` on CUDA (rank 0 = the flow's ``device``), on the CPU otherwise."""
    from rlcadence.devices import resolve_device

    return f"cuda:{rank}" if resolve_device(cfg.device).type == "cuda" else "cpu"


def _threads(world_size: int) -> int:
    """A CPU rank's torch threads: OMP_NUM_THREADS when set, else an equal share of the cores."""
    env = os.environ.get("OMP_NUM_THREADS")
    return int(env) if env and env.isdigit() else max(1, (os.cpu_count() or 1) // world_size)


def worker_main(rank: int, cfg: RLConfig, run_id: str, init_file: str, conn: Connection) -> None:
    """Rank ``rank`` > 0: join the group, then load / train on rank 0's command until told to stop or the
    flow process goes away (its end of the pipe closes)."""
    torch.set_num_threads(_threads(cfg.train_world_size))
    conn.send(("ready", os.getpid()))
    ctx = D.init(cfg.train_backend, rank_device(cfg, rank), timeout_s=cfg.train_timeout_s,
                 init_method=f"file://{init_file}", rank=rank, world_size=cfg.train_world_size)
    replica: Replica | None = None
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return  # rank 0 is gone
            try:
                if msg[0] == "stop":
                    return
                if msg[0] == "load":
                    replica = load_replica(cfg, Path(msg[1]), ctx)
                elif msg[0] == "train":
                    if replica is None:
                        raise RuntimeError("train before load")
                    train_replica(replica, cfg, run_id, msg[1], checkpoint_due=msg[2])
                elif msg[0] == "exit":  # tests: a rank that dies inside a step
                    os._exit(int(msg[1]))
                conn.send(("ok", msg[0]))
            except Exception as err:  # noqa: BLE001 - reported to rank 0, which fails the step naming this rank
                conn.send(("error", f"{type(err).__name__}: {err}", traceback.format_exc()))
                return
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class TrainGroup:
    """Rank 0's handle on the run's worker processes and its own replica."""

    def __init__(self, cfg: RLConfig, run_id: str):
        self.cfg, self.run_id = cfg, run_id
        self.world_size = cfg.train_world_size
        self.timeout_s = cfg.train_timeout_s
        self.replica: Replica | None = None
        self.closed = False
        self._tmp = tempfile.mkdtemp(prefix="rlc-train-group-")
        init_file = str(Path(self._tmp) / "rendezvous")
        spawn = mp.get_context("spawn")
        self.procs: list[mp.Process] = []
        self.conns: dict[int, Connection] = {}
        try:
            for rank in range(1, self.world_size):
                ours, theirs = spawn.Pipe(duplex=True)
                proc = spawn.Process(target=worker_main, args=(rank, cfg, run_id, init_file, theirs),
                                     name=f"rlc-train-rank{rank}", daemon=True)
                proc.start()
                theirs.close()
                self.procs.append(proc)
                self.conns[rank] = ours
            for rank in self.conns:
                self._answer(rank, "start", want="ready")
            self.ctx = D.init(cfg.train_backend, rank_device(cfg, 0), timeout_s=self.timeout_s,
                              init_method=f"file://{init_file}", rank=0, world_size=self.world_size)
        except BaseException as err:
            raise self._abort(err, "start") from err

    @property
    def pids(self) -> dict[int, int]:
        return {rank: proc.pid for rank, proc in zip(self.conns, self.procs, strict=True)}

    # -- commands ------------------------------------------------------------------------------
    def load(self, ckpt: Path) -> Replica:
        """Every rank loads checkpoint ``ckpt`` into a fresh replica; returns rank 0's."""
        self.replica = None
        self.replica = self._run(("load", str(ckpt)), "load", lambda: load_replica(self.cfg, ckpt, self.ctx))
        return self.replica

    def train(self, step: int, checkpoint_due: bool, rows: list[dict]) -> dict[str, float]:
        """The update of ``step`` on every rank (rank 0 uses ``rows``, the workers read the store)."""
        if self.replica is None:
            raise TrainGroupError("the train group has no replica loaded")
        return self._run(("train", step, checkpoint_due), f"step {step}",
                         lambda: train_replica(self.replica, self.cfg, self.run_id, step, checkpoint_due, rows))

    def _run(self, msg: tuple, what: str, mine):
        """Send ``msg`` to every worker, do rank 0's share, then wait for each worker's answer."""
        if self.closed:
            raise TrainGroupError(f"the train group is closed ({what})")
        try:
            self._check_alive(what)
            for conn in self.conns.values():
                conn.send(msg)
            out = mine()
            for rank in self.conns:
                self._answer(rank, what, want="ok")
            return out
        except BaseException as err:
            raise self._abort(err, what) from err

    # -- failures ------------------------------------------------------------------------------
    def _dead(self) -> list[str]:
        return [f"train rank {rank} (pid {proc.pid}) died with exit code {proc.exitcode}"
                for rank, proc in zip(self.conns, self.procs, strict=True) if not proc.is_alive()]

    def _check_alive(self, what: str) -> None:
        dead = self._dead()
        if dead:
            raise TrainGroupError(f"{'; '.join(dead)} before {what}")

    def _answer(self, rank: int, what: str, want: str):
        """Rank ``rank``'s answer to the last command, within ``train_timeout_s``; its death or error raises."""
        conn, proc = self.conns[rank], self.procs[rank - 1]
        end = time.monotonic() + self.timeout_s
        while not conn.poll(0.2):
            if not proc.is_alive() and not conn.poll(0):
                raise TrainGroupError(f"train rank {rank} (pid {proc.pid}) died with exit code {proc.exitcode} "
                                      f"during {what}")
            if time.monotonic() > end:
                raise TrainGroupError(f"train rank {rank} (pid {proc.pid}) did not answer within "
                                      f"train_timeout_s={self.timeout_s:g} during {what}")
        try:
            reply = conn.recv()
        except (EOFError, OSError):
            proc.join(timeout=5)
            raise TrainGroupError(f"train rank {rank} (pid {proc.pid}) died with exit code {proc.exitcode} "
                                  f"during {what}") from None
        if reply[0] == "error":
            raise TrainGroupError(f"train rank {rank} failed during {what}: {reply[1]}\n{reply[2]}")
        if reply[0] != want:
            raise TrainGroupError(f"train rank {rank} answered {reply[0]!r} during {what}, expected {want!r}")
        return reply

    def _abort(self, err: BaseException, what: str) -> BaseException:
        """Tear the group down; the error to raise names the failed rank when one is known. A collective
        error on rank 0 (a peer's connection closed, a timeout) is usually a worker's death: wait a moment
        for the worker's own report or exit code, so the message says which rank."""
        if isinstance(err, TrainGroupError):
            message = str(err)
        else:
            message = self._worker_cause(what) or f"train rank 0 failed during {what}: {type(err).__name__}: {err}"
        self.close(kill=True)
        return TrainGroupError(message)

    def _worker_cause(self, what: str) -> str | None:
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            for rank, conn in self.conns.items():
                try:
                    if conn.poll(0):
                        reply = conn.recv()
                        if reply[0] == "error":
                            return f"train rank {rank} failed during {what}: {reply[1]}"
                except (EOFError, OSError):
                    pass
            dead = self._dead()
            if dead:
                return f"{'; '.join(dead)} during {what}"
            time.sleep(0.1)
        return None

    # -- shutdown ------------------------------------------------------------------------------
    def close(self, kill: bool = False) -> None:
        """Stop the workers (asked to stop, killed after a few seconds, or at once with ``kill``) and leave
        the process group. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.replica = None
        if not kill:
            for conn in self.conns.values():
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send(("stop",))
        for proc in self.procs:
            if kill:
                proc.kill()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self.conns.values():
            conn.close()
        if dist.is_initialized():
            with contextlib.suppress(Exception):  # a group broken by a dead peer may refuse a clean exit
                dist.destroy_process_group()
        shutil.rmtree(self._tmp, ignore_errors=True)
