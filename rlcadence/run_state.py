"""The live objects of one run in this process: policy + optimizer, generator, reference model, bf16
snapshots and the opened environments.

The flow opens one :class:`RunState` and hands it to every stage, so a stage's signature says what it
depends on. Stages pass URIs, not tensors; the run state keeps the models in memory between the stages of
one process. It never travels: pickled (a stage on another process or machine, a persisted result), it
becomes its recipe, ``(config, run_id)``, and the copy rebuilds what it needs from the store's checkpoints.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcadence.config import RLConfig
from rlcadence.engines.hf import TransformersEngine
from rlcadence.environments.mix import Environment, open_environments
from rlcadence.preflight import default_max_prompt_tokens
from rlcadence.storage.checkpoints import local_checkpoint_dir, publish_checkpoint
from rlcadence.trainer.checkpoint import TrainerState, load_trainer_state, write_checkpoint
from rlcadence.trainer.update import build_optimizer

CACHE_ROOT = Path(os.environ.get("RLCADENCE_CACHE", Path.home() / ".cache" / "rlcadence"))


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    state: TrainerState


class RunState:
    """One run's live objects, owned by whoever opened it (the flow), released by :meth:`close`."""

    def __init__(self, config: RLConfig, run_id: str):
        self.config, self.run_id = config, run_id
        self.loc = config.store_location()
        self.policy: Policy | None = None
        self.engine: TransformersEngine | None = None
        self.ref_model: torch.nn.Module | None = None
        self.ref_version: int | None = None
        self._snapshots: dict[int, dict[str, torch.Tensor]] = {}  # bf16 weights by checkpoint step
        self._environments: list[Environment] | None = None

    def __reduce__(self):
        return (RunState, (self.config, self.run_id))  # live objects never travel: the copy rebuilds them

    def __repr__(self) -> str:
        return f"RunState(run_id={self.run_id!r})"

    def __enter__(self) -> RunState:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop scorer pools and drop the models (a later stage call would rebuild them)."""
        for env in self._environments or []:
            env.close()
        self._environments = None
        self.policy = self.engine = self.ref_model = None
        self._snapshots.clear()

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.config.optimizer.master_dtype == "bfloat16" else torch.float32

    def checkpoint_dir(self, step: int) -> Path:
        return local_checkpoint_dir(self.loc, self.run_id, step, CACHE_ROOT / "checkpoints")

    def save_checkpoint(self, model, tokenizer, state: TrainerState) -> str:
        """Write checkpoint ``state.step`` to a local temp dir, then publish it in the store in one move."""
        with tempfile.TemporaryDirectory(prefix="rlc-ckpt-") as tmp:
            write_checkpoint(Path(tmp), model, tokenizer, state)
            return publish_checkpoint(self.loc, self.run_id, state.step, Path(tmp))

    def policy_at(self, step: int) -> Policy:
        """The trainer's model + optimizer after ``step`` optimizer steps (memory, else checkpoint)."""
        if self.policy is not None and self.policy.state.step == step:
            return self.policy
        ckpt = self.checkpoint_dir(step)
        state = load_trainer_state(ckpt)
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=self.dtype)
        tokenizer = AutoTokenizer.from_pretrained(ckpt)
        optimizer = build_optimizer(model, self.config.optimizer)
        if state.optimizer:
            optimizer.load_state_dict(state.optimizer)
        if state.torch_rng is not None:
            torch.set_rng_state(state.torch_rng)
        if state.python_rng is not None:
            random.setstate(state.python_rng)
        self.policy = Policy(model, tokenizer, optimizer, state)
        return self.policy

    def generator_at(self, version: int) -> TransformersEngine:
        """The generation engine holding policy ``version`` (synced from memory when it is the live policy)."""
        if self.engine is None:
            self.engine = TransformersEngine(self.checkpoint_dir(version), version=version)
        elif self.engine.policy_version != version:
            live = self.policy
            if live is not None and live.state.step == version:
                self.engine.load_state_dict({k: v.float() for k, v in live.model.state_dict().items()}, version)
            else:
                self.engine.load_weights(self.checkpoint_dir(version), version)
        return self.engine

    def reference_at(self, version: int) -> torch.nn.Module:
        if self.ref_model is None or self.ref_version != version:
            self.ref_model = AutoModelForCausalLM.from_pretrained(self.checkpoint_dir(version)).eval()
            self.ref_version = version
        return self.ref_model

    def bf16_snapshot(self, step: int) -> dict[str, torch.Tensor]:
        """Weights of checkpoint ``step`` in bf16 (for update sparsity), kept for the two versions in use."""
        if step not in self._snapshots:
            model = AutoModelForCausalLM.from_pretrained(self.checkpoint_dir(step))
            self._snapshots[step] = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
            for old in [s for s in self._snapshots if s not in (0, step)][:-1]:
                del self._snapshots[old]
        return self._snapshots[step]

    def environments(self, tokenizer=None) -> list[Environment]:
        """The run's environments, opened once per process (dataset files read and validated, scorers started)."""
        if self._environments is None:
            cfg, arith = self.config, self.config.bootstrap.environment
            self._environments = open_environments(cfg.environments, cfg.seed, arith.split_seed, arith.digits,
                                                   arith.n_heldout, tokenizer, default_max_prompt_tokens(cfg))
        return self._environments
