"""Process-local live objects of a run (policy + optimizer, generator engine, reference model).

Prefect tasks pass URIs, not tensors; this cache keeps the model in memory between the tasks of one
process and rebuilds it from the store's checkpoints in a fresh one (resume, another machine).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcadence.config import RLConfig
from rlcadence.storage.location import StoreLocation
from rlcadence.tasks.checkpoint import TrainerState, load_trainer_state, local_checkpoint_dir
from rlcadence.tasks.engine.hf import TransformersEngine
from rlcadence.tasks.train import build_optimizer

CACHE_ROOT = Path(os.environ.get("RLCADENCE_CACHE", Path.home() / ".cache" / "rlcadence"))


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    state: TrainerState


@dataclass
class RunRuntime:
    run_id: str
    loc: StoreLocation
    policy: Policy | None = None
    engine: TransformersEngine | None = None
    ref_model: torch.nn.Module | None = None
    ref_version: int | None = None
    snapshots: dict[int, dict[str, torch.Tensor]] | None = None  # bf16 weights by checkpoint step
    tasks: list | None = None  # task_mix.LiveTask, opened once per process


_RUNTIMES: dict[str, RunRuntime] = {}


def runtime(run_id: str, cfg: RLConfig) -> RunRuntime:
    rt = _RUNTIMES.get(run_id)
    if rt is None:
        rt = _RUNTIMES[run_id] = RunRuntime(run_id, cfg.store_location())
    return rt


def forget(run_id: str) -> None:
    _RUNTIMES.pop(run_id, None)


def checkpoint_dir(rt: RunRuntime, step: int) -> Path:
    return local_checkpoint_dir(rt.loc, rt.run_id, step, CACHE_ROOT / "checkpoints")


def dtype_of(cfg: RLConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.optimizer.master_dtype == "bfloat16" else torch.float32


def policy_at(rt: RunRuntime, cfg: RLConfig, step: int) -> Policy:
    """The trainer's model + optimizer after ``step`` optimizer steps (memory, else checkpoint)."""
    if rt.policy is not None and rt.policy.state.step == step:
        return rt.policy
    ckpt = checkpoint_dir(rt, step)
    state = load_trainer_state(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype_of(cfg))
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    optimizer = build_optimizer(model, cfg.optimizer)
    if state.optimizer:
        optimizer.load_state_dict(state.optimizer)
    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
    if state.python_rng is not None:
        random.setstate(state.python_rng)
    rt.policy = Policy(model, tokenizer, optimizer, state)
    return rt.policy


def generator_at(rt: RunRuntime, version: int) -> TransformersEngine:
    """The generation engine holding policy ``version`` (synced from memory when it is the live policy)."""
    if rt.engine is None:
        rt.engine = TransformersEngine(checkpoint_dir(rt, version), version=version)
    elif rt.engine.policy_version != version:
        live = rt.policy
        if live is not None and live.state.step == version:
            rt.engine.load_state_dict({k: v.float() for k, v in live.model.state_dict().items()}, version)
        else:
            rt.engine.load_weights(checkpoint_dir(rt, version), version)
    return rt.engine


def reference_at(rt: RunRuntime, version: int) -> torch.nn.Module:
    if rt.ref_model is None or rt.ref_version != version:
        rt.ref_model = AutoModelForCausalLM.from_pretrained(checkpoint_dir(rt, version)).eval()
        rt.ref_version = version
    return rt.ref_model


def bf16_snapshot(rt: RunRuntime, step: int) -> dict[str, torch.Tensor]:
    """Weights of checkpoint ``step`` in bf16 (for update sparsity), kept for the two versions in use."""
    if rt.snapshots is None:
        rt.snapshots = {}
    if step not in rt.snapshots:
        model = AutoModelForCausalLM.from_pretrained(checkpoint_dir(rt, step))
        rt.snapshots[step] = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
        for old in [s for s in rt.snapshots if s not in (0, step)][:-1]:
            del rt.snapshots[old]
    return rt.snapshots[step]


def live_tasks(rt: RunRuntime, cfg: RLConfig, tokenizer=None) -> list:
    """The run's tasks, opened once per process (dataset files read and validated, scorers started)."""
    if rt.tasks is None:
        from rlcadence.tasks.task_mix import open_tasks

        t = cfg.bootstrap.task
        rt.tasks = open_tasks(cfg.tasks, cfg.seed, t.split_seed, t.digits, t.n_heldout, tokenizer)
    return rt.tasks
