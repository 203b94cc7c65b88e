"""The live objects of one run in this process: policy + optimizer, generator, reference model, bf16
snapshots, the opened environments, and the background checkpoint writer.

The flow opens one :class:`RunState` and hands it to every stage, so a stage's signature says what it
depends on. Stages pass URIs, not tensors; the run state keeps the models in memory between the stages of
one process. It never travels: pickled (a stage on another process or machine, a persisted result), it
becomes its recipe, ``(config, run_id)``, and the copy rebuilds what it needs from the store.

Rebuilding is one rule, :meth:`RunState.policy_at`: load the latest full checkpoint at or before the step,
then replay the committed steps after it from their stored rollouts (no generation, no scoring). A policy
*version* (what the generator or reference holds) comes from the live policy, a copy held since a replay,
the generator itself, or the store: a full checkpoint, or a weights-only one written when a version older
than the latest full checkpoint is still in use.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcadence.config import RLConfig, checkpoint_due, is_due
from rlcadence.devices import configure_matmul, resolve_device
from rlcadence.engines.hf import TransformersEngine
from rlcadence.engines.settings import resolve_engine
from rlcadence.environments.mix import Environment, open_environments
from rlcadence.preflight import default_max_prompt_tokens, model_positions
from rlcadence.storage.checkpoints import (
    FULL,
    WEIGHTS,
    checkpoint_steps,
    has_weights,
    local_checkpoint_dir,
    local_weights_dir,
    publish_checkpoint,
)
from rlcadence.trainer.checkpoint import (
    Snapshot,
    TrainerState,
    load_trainer_state,
    restore_rng,
    snapshot,
    write_snapshot,
)
from rlcadence.trainer.distributed import inner
from rlcadence.trainer.group import TrainGroup
from rlcadence.trainer.replica import GatheredOptimizer
from rlcadence.trainer.update import build_optimizer, prepare_for_training

CACHE_ROOT = Path(os.environ.get("RLCADENCE_CACHE", Path.home() / ".cache" / "rlcadence"))
log = logging.getLogger(__name__)


@dataclass
class Policy:
    """The trainer's model + optimizer. With ``train_world_size`` > 1, ``trainer`` is the run's train group and
    ``model`` is rank 0's full model: DDP's own replica, or (FSDP2) a plain copy refreshed from the weights
    all ranks gathered after each step. Either way it is what the generator, evaluation and checkpoints read."""

    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    state: TrainerState
    trainer: TrainGroup | None = None

    def refresh(self) -> None:
        """After a data-parallel step: FSDP2's consolidated weights into rank 0's full model."""
        full = self.trainer.replica.full_weights if self.trainer is not None and self.trainer.replica else None
        if full is not None:
            with torch.no_grad():
                self.model.load_state_dict(full)

    def checkpoint_optimizer(self):
        """The optimizer a checkpoint reads: FSDP2's state consolidated at this step, else the optimizer."""
        replica = self.trainer.replica if self.trainer is not None else None
        if replica is None or replica.full_weights is None:
            return self.optimizer
        return GatheredOptimizer(replica.full_optimizer)


class BackgroundWriter:
    """Runs store jobs on one background thread, in order, off the step's critical path (checkpoints; the
    in-run compaction on a second instance).

    A failed job is raised at the next submit or at :meth:`wait`; a killed process leaves only temp files
    (publishing is atomic), and resume falls back to the previous checkpoint plus replay.
    """

    def __init__(self, thread_name: str = "rlc-ckpt") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._pending: list[Future] = []
        self.last_write_s: float | None = None  # wall seconds of the last finished job
        self.last_cpu_s: float | None = None  # its thread's CPU seconds (what it took from the step's cores)

    def submit(self, job) -> None:
        self._reap(block=False)
        self._pending.append(self._pool.submit(self._timed, job))

    def _timed(self, job):
        t0, c0 = time.perf_counter(), time.thread_time()
        out = job()
        self.last_write_s, self.last_cpu_s = time.perf_counter() - t0, time.thread_time() - c0
        return out

    def _reap(self, block: bool) -> None:
        still = []
        for fut in self._pending:
            if block or fut.done():
                fut.result()  # raises the write's error here, in the trainer's thread
            else:
                still.append(fut)
        self._pending = still

    def wait(self) -> float:
        """Block until every job is done; returns the seconds waited."""
        t0 = time.perf_counter()
        try:
            self._reap(block=True)
        finally:
            self._pending = [f for f in self._pending if not f.done()]
        return time.perf_counter() - t0

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def versions_at(state: TrainerState, step: int, cfg: RLConfig) -> tuple[int, int]:
    """(generator version, reference version) after advancing ``state`` to ``step`` under the run's cadences."""
    gen, ref = state.generator_version, state.ref_version
    for done in range(state.step + 1, step + 1):
        gen = done if is_due(done, cfg.sync_every) else gen
        ref = done if is_due(done, cfg.ref_sync_every) else ref
    return gen, ref


class RunState:
    """One run's live objects, owned by whoever opened it (the flow), released by :meth:`close`."""

    def __init__(self, config: RLConfig, run_id: str):
        self.config, self.run_id = config, run_id
        self.loc = config.store_location()
        self.device = resolve_device(config.device)
        self.generator_device = resolve_device(config.generator_device or config.device)
        configure_matmul(self.device)
        self.policy: Policy | None = None
        self.engine: TransformersEngine | None = None  # or a VLLMEngine (engine: vllm)
        self.sync_metrics: dict[str, float] = {}  # the latest generator sync, taken by the train stage
        self.ref_model: torch.nn.Module | None = None
        self.ref_version: int | None = None
        self.writer = BackgroundWriter("rlc-ckpt")
        self.compactor = BackgroundWriter("rlc-compact")  # the in-run compaction (tasks/commit.py)
        self._held: dict[int, dict[str, torch.Tensor]] = {}  # host copies of versions passed during a replay
        self._bf16: dict[int, dict[str, torch.Tensor]] = {}  # bf16 weights by version (update sparsity)
        self._persisted: set[int] = set()  # versions whose weights are in the store or being written
        self._environments: list[Environment] | None = None
        self.stage_seconds = 0.0  # inside stage functions since the last commit (tasks/stage.py)
        self.next_step: int | None = None  # the first step not yet committed by this process (set by the loop)
        self.group: TrainGroup | None = None  # train_world_size > 1: the worker ranks, spawned on first use
        self.pending_generations: dict[int, object] = {}  # step -> generation sent ahead (max_staleness)

    def __reduce__(self):
        return (RunState, (self.config, self.run_id))  # live objects never travel: the copy rebuilds them

    def __repr__(self) -> str:
        return f"RunState(run_id={self.run_id!r})"

    def __enter__(self) -> RunState:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        """Finish pending compaction and checkpoint writes, stop scorer pools and the train ranks, drop the models."""
        try:
            try:
                self.compactor.close()
            finally:
                self.writer.close()
        finally:
            for env in self._environments or []:
                env.close()
            self._environments = None
            self.pending_generations.clear()
            close_engine = getattr(self.engine, "close", None)  # the server's HTTP connections, the Ray actor
            if close_engine is not None:
                close_engine()
            if self.config.runner == "ray":
                from rlcadence.ray_cluster import disconnect

                disconnect()
            self.policy = self.engine = self.ref_model = None
            if self.group is not None:
                self.group.close()
                self.group = None
            self._held.clear()
            self._bf16.clear()

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.config.optimizer.master_dtype == "bfloat16" else torch.float32

    @property
    def generator_dtype(self) -> torch.dtype:
        """fp32 on the CPU (bitwise reproducible sampling); bf16 on CUDA, as generators there run."""
        return torch.bfloat16 if self.generator_device.type == "cuda" else torch.float32

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_dir(self, step: int, kind: str = FULL) -> Path:
        return local_checkpoint_dir(self.loc, self.run_id, step, CACHE_ROOT / "checkpoints", kind)

    def weights_dir(self, version: int) -> Path:
        """A local model directory of policy ``version`` from the store (full or weights-only checkpoint)."""
        return local_weights_dir(self.loc, self.run_id, version, CACHE_ROOT / "checkpoints")

    def _publish(self, snap: Snapshot, step: int, kind: str) -> str:
        with tempfile.TemporaryDirectory(prefix="rlc-ckpt-") as tmp:
            write_snapshot(Path(tmp), snap, self.config.checkpoint_shard_bytes)
            return publish_checkpoint(self.loc, self.run_id, step, Path(tmp), kind)

    def save_checkpoint(self, model, tokenizer, state: TrainerState, optimizer=None, wait: bool = False) -> int:
        """Checkpoint ``state.step``: host copies now, serialisation and publishing in the background.
        Returns the bytes copied (weights + optimizer state)."""
        snap = snapshot(model, tokenizer, state, optimizer)
        self._persisted.add(state.step)
        self.writer.submit(lambda: self._publish(snap, state.step, FULL))
        if wait:
            self.writer.wait()
        return snap.nbytes

    def checkpoint_if_due(self, policy: Policy) -> dict[str, float]:
        """After an update: a full checkpoint every ``checkpoint_every`` steps (and after the last step), plus
        the weights of any generator/reference version older than it that is still in use."""
        cfg, state = self.config, policy.state
        if not checkpoint_due(cfg, state.step):
            return {"checkpoint/bytes": 0.0}
        t0 = time.perf_counter()
        nbytes = self.save_checkpoint(policy.model, policy.tokenizer, state, policy.checkpoint_optimizer())
        for version, model in self._versions_in_use(state):
            if version < state.step and version not in self._persisted and not has_weights(self.loc, self.run_id, version):
                snap = snapshot(model, policy.tokenizer, None)
                nbytes += snap.nbytes
                self._persisted.add(version)
                self.writer.submit(lambda snap=snap, v=version: self._publish(snap, v, WEIGHTS))
        out = {"checkpoint/bytes": float(nbytes), "time/checkpoint_s": time.perf_counter() - t0}
        if self.writer.last_write_s is not None:
            out["time/checkpoint_write_s"] = self.writer.last_write_s
        return out

    def _versions_in_use(self, state: TrainerState) -> list[tuple[int, torch.nn.Module]]:
        """(version, a module holding exactly its weights) for the generator and, when loaded, the reference."""
        out = []
        if self.engine is not None and self.engine.policy_version == state.generator_version:
            out.append((state.generator_version, self.engine.model))
        if self.ref_model is not None and self.ref_version == state.ref_version:
            out.append((state.ref_version, self.ref_model))
        return out

    # -- the policy ----------------------------------------------------------------------------
    def train_group(self) -> TrainGroup:
        """The run's data-parallel ranks (``train_world_size`` > 1): spawned once, again after a failure."""
        if self.group is None or self.group.closed:
            self.group = TrainGroup(self.config, self.run_id)
        return self.group

    def _load_policy(self, step: int) -> Policy:
        ckpt = self.checkpoint_dir(step)
        state = load_trainer_state(ckpt)
        tokenizer = AutoTokenizer.from_pretrained(ckpt)
        if self.config.train_world_size > 1:
            policy = self._load_on_ranks(ckpt, tokenizer, state)
        else:
            model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=self.dtype).to(self.device)
            prepare_for_training(model, self.config)
            optimizer = build_optimizer(model, self.config.optimizer)
            if state.optimizer:
                optimizer.load_state_dict(state.optimizer)
            policy = Policy(model, tokenizer, optimizer, state)
        restore_rng(state)
        self._persisted.add(step)
        return policy

    def _load_on_ranks(self, ckpt: Path, tokenizer, state: TrainerState) -> Policy:
        """Every rank loads the checkpoint; rank 0's full model is DDP's replica or, for FSDP2, a plain copy."""
        group = self.train_group()
        replica = group.load(ckpt)
        if replica.full_weights is None:  # DDP
            model = inner(replica.wrapped)
        else:
            model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=self.dtype).to(self.device).requires_grad_(False)
        policy = Policy(model, tokenizer, replica.optimizer, state, trainer=group)
        policy.refresh()
        return policy

    def policy_at(self, step: int) -> Policy:
        """The trainer's model + optimizer after ``step`` optimizer steps: in memory, or rebuilt from the
        latest full checkpoint at or before ``step`` and the committed steps after it (replayed, not re-run)."""
        from rlcadence.trainer.step import (
            advance,  # the step needs the run state; import here, not at the top
        )

        live = self.policy
        if live is None or live.state.step > step:
            base = max((s for s in checkpoint_steps(self.loc, self.run_id) if s <= step), default=None)
            if base is None:
                raise FileNotFoundError(f"run {self.run_id}: no checkpoint at or before step {step} in {self.loc.uri}")
            live = self.policy = self._load_policy(base)
        if live.state.step < step:
            targets = set(versions_at(live.state, step, self.config))
            log.info("run %s: replaying steps %d..%d from the stored rollouts", self.run_id, live.state.step, step - 1)
            while live.state.step < step:
                advance(self, live, live.state.step)
                if live.state.step in targets and live.state.step < step:
                    self._held[live.state.step] = {k: v.detach().to("cpu", copy=True)
                                                   for k, v in live.model.state_dict().items()}
        return live

    def eval_model(self, step: int) -> tuple[torch.nn.Module, object]:
        """(model, tokenizer) of the policy after ``step`` updates, for a later evaluation: the stored
        checkpoint or weights file of that version when there is one, else :meth:`policy_at` (the latest
        full checkpoint before it plus a replay). Same dtype and device as the trainer's own evaluation."""
        tokenizer = AutoTokenizer.from_pretrained(self.checkpoint_dir(0))
        if has_weights(self.loc, self.run_id, step):
            model = AutoModelForCausalLM.from_pretrained(self.weights_dir(step), dtype=self.dtype)
            return model.to(self.device), tokenizer
        return self.policy_at(step).model, tokenizer

    # -- policy versions -----------------------------------------------------------------------
    def weights_of(self, version: int, engine_ok: bool = False) -> dict[str, torch.Tensor] | None:
        """The weights of policy ``version`` from memory, or None when only the store has them."""
        live = self.policy
        if live is not None and live.state.step == version:
            return live.model.state_dict()
        if version in self._held:
            return self._held[version]
        if engine_ok and self.engine is not None and self.engine.policy_version == version:
            return self.engine.model.state_dict()
        return None

    def _model_at(self, version: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        weights = self.weights_of(version)
        if weights is None:
            return AutoModelForCausalLM.from_pretrained(self.weights_dir(version), dtype=dtype).to(device)
        model = AutoModelForCausalLM.from_pretrained(self.checkpoint_dir(0), dtype=dtype)
        model.load_state_dict(weights)
        return model.to(device)

    def _drop_held(self) -> None:
        keep = {self.engine.policy_version if self.engine else None, self.ref_version}
        for v in [v for v in self._held if v not in keep]:
            del self._held[v]

    @property
    def engine_kind(self) -> str:
        return resolve_engine(self.config.engine, self.generator_device.type, self.config.generator_url)

    def server_weights_dir(self) -> Path:
        """Server mode: where this run's syncs write safetensors for the server (generator_server.weights_dir,
        else <store>/generator-weights, per run)."""
        base = self.config.generator_server.weights_dir or self.loc.path("generator-weights")
        return Path(base) / self.run_id

    def _new_engine(self) -> TransformersEngine:
        device = str(self.generator_device)
        if self.config.runner == "ray":
            from rlcadence.engines.ray_actor import RayEngine
            from rlcadence.ray_cluster import connect

            connect(self.config.ray_address)
            return RayEngine(self.run_id, self.checkpoint_dir(0), self.generator_device, self.generator_dtype,
                             self.config.ray_generator_gpus)
        name = self.config.vllm.dtype
        dtype = self.generator_dtype if name == "auto" else getattr(torch, name)
        if self.engine_kind == "vllm-server":
            from rlcadence.engines.server import VLLMServerEngine

            return VLLMServerEngine(self.config.generator_url, self.checkpoint_dir(0), self.server_weights_dir(),
                                    dtype=dtype, settings=self.config.generator_server, sync=self.config.vllm.sync)
        if self.engine_kind == "vllm":
            from rlcadence.engines.vllm import VLLMEngine  # imports vLLM: only when asked for

            return VLLMEngine(self.checkpoint_dir(0), version=0, device=device, dtype=dtype, settings=self.config.vllm)
        return TransformersEngine(self.checkpoint_dir(0), version=0, device=device, dtype=self.generator_dtype)

    def generator_at(self, version: int) -> TransformersEngine:
        """The generation engine holding policy ``version`` (synced from memory when it is there); the
        sync's seconds and bytes go to :attr:`sync_metrics`."""
        if self.engine is None:
            self.engine = self._new_engine()
        wake = getattr(self.engine, "wake_up", None)
        if wake is not None:
            wake()
        if self.engine.policy_version != version:
            weights = self.weights_of(version)
            if weights is None:
                self.engine.load_weights(self.weights_dir(version), version)
            else:
                self.engine.load_state_dict(weights, version)
            self.sync_metrics = dict(self.engine.last_sync)
            self._drop_held()
        return self.engine

    def release_generator(self) -> None:
        """After generation: vLLM's sleep mode (CUDA, ``vllm.sleep_between_steps``) frees its memory for the trainer."""
        sleep = getattr(self.engine, "sleep", None)
        if sleep is not None:
            sleep()

    def pop_sync_metrics(self) -> dict[str, float]:
        out, self.sync_metrics = self.sync_metrics, {}
        return out

    def reference_at(self, version: int) -> torch.nn.Module:
        """The reference model at policy ``version``: no grad, eval mode, on the trainer's device."""
        if self.ref_model is None or self.ref_version != version:
            self.ref_model = self._model_at(version, torch.float32, self.device).eval().requires_grad_(False)
            self.ref_version = version
            self._drop_held()
        return self.ref_model.to(self.device)

    def release_reference(self) -> None:
        """With ``reference_offload`` on CUDA, park the reference model in host memory between uses."""
        if self.ref_model is not None and self.config.reference_offload and self.device.type == "cuda":
            self.ref_model.to("cpu")

    def bf16_weights(self, version: int) -> dict[str, torch.Tensor]:
        """Weights of ``version`` in bf16 (update sparsity), kept for version 0 and the one in use."""
        if version not in self._bf16:
            weights = self.weights_of(version, engine_ok=True)
            if weights is None:
                weights = AutoModelForCausalLM.from_pretrained(self.weights_dir(version)).state_dict()
            self._bf16[version] = {k: v.detach().to(torch.bfloat16, copy=True) for k, v in weights.items()}
            for old in [s for s in self._bf16 if s not in (0, version)]:
                del self._bf16[old]
        return self._bf16[version]

    def environments(self, tokenizer=None) -> list[Environment]:
        """The run's environments, opened once per process (dataset files read and validated, scorers started)."""
        if self._environments is None:
            cfg, arith = self.config, self.config.bootstrap.environment
            self._environments = open_environments(cfg.environments, cfg.seed, arith.split_seed, arith.digits,
                                                   arith.n_heldout, tokenizer, default_max_prompt_tokens(cfg),
                                                   device=str(self.device), positions=model_positions(cfg))
        return self._environments
