"""One rank's model replica in the RL flow's data-parallel train stage, and its update of one step.

Every rank, the flow's rank 0 included, runs exactly these functions in the same order, so their
collectives (DDP's broadcast and all-reduce, FSDP2's all-gathers and reduce-scatters, the metric
reductions, the consolidation gathers) pair up. After a step, FSDP2 ranks gather the full weights (and,
when a checkpoint is due, the optimizer state) together, before rank 0 hands anything to the generator
or a checkpoint: never a gather interleaved with a rank-0 send (trl#6797).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcadence.config import RLConfig
from rlcadence.prompts import pad_token_id
from rlcadence.storage import tables
from rlcadence.trainer import distributed as D
from rlcadence.trainer.checkpoint import load_trainer_state
from rlcadence.trainer.update import PackedBatch, build_optimizer, pack, prepare_for_training


@dataclass
class Replica:
    """This rank's wrapped model and optimizer, at optimizer step ``step``."""

    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ctx: D.DistContext
    pad_id: int
    step: int
    full_weights: dict[str, torch.Tensor] | None = None  # FSDP2, rank 0: the consolidated weights after the last step
    full_optimizer: dict | None = None  # FSDP2, rank 0: the consolidated optimizer state, when a checkpoint was due


class GatheredOptimizer:
    """What a checkpoint reads of an optimizer (``state_dict()``), for FSDP2's consolidated state."""

    def __init__(self, state: dict | None):
        if state is None:
            raise RuntimeError("FSDP2: the optimizer state was not gathered at this step (no checkpoint was due)")
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def master_dtype(cfg: RLConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.optimizer.master_dtype == "bfloat16" else torch.float32


def load_replica(cfg: RLConfig, ckpt: Path, ctx: D.DistContext) -> Replica:
    """Every rank loads the same consolidated checkpoint (written at any world size), wraps it and shards
    its optimizer state as the strategy does. Collective (DDP broadcasts, FSDP2 shards)."""
    state = load_trainer_state(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=master_dtype(cfg)).to(ctx.device)
    prepare_for_training(model, cfg)
    wrapped = D.wrap(model, cfg.train_strategy, ctx)
    optimizer = build_optimizer(wrapped, cfg.optimizer)
    if state.optimizer:
        D.load_optimizer_state(wrapped, optimizer, state.optimizer)
    replica = Replica(wrapped, optimizer, ctx, pad_token_id(AutoTokenizer.from_pretrained(ckpt)), state.step)
    _consolidate(replica, optimizer_too=False)
    return replica


def grpo_inputs(rows: list[dict], pad_id: int) -> tuple[PackedBatch, torch.Tensor, torch.Tensor]:
    """(batch, advantages, kept) of a step's committed rollout rows, as generated (never re-tokenised)."""
    batch = pack([r["prompt_token_ids"] for r in rows], [r["token_ids"] for r in rows], pad_id,
                 [r["token_logprobs"] for r in rows])
    advantages = torch.tensor([r["advantage"] for r in rows], dtype=torch.float32)
    kept = torch.tensor([r["kept"] for r in rows], dtype=torch.bool)
    return batch, advantages, kept


def train_replica(replica: Replica, cfg: RLConfig, run_id: str, step: int, checkpoint_due: bool,
                  rows: list[dict] | None = None) -> dict[str, float]:
    """Optimizer step ``step`` -> ``step + 1`` on this rank's share of the step's stored rollouts
    (read from the store unless given). Collective: every rank calls it with the same step."""
    if replica.step != step:
        raise RuntimeError(f"train rank {replica.ctx.rank} is at step {replica.step}, asked for the update of step {step}")
    if rows is None:
        rows = tables.read_step_table(cfg.store_location(), "rollouts", run_id, step).to_pylist()
    batch, advantages, kept = grpo_inputs(rows, replica.pad_id)
    for group in replica.optimizer.param_groups:
        group["lr"] = cfg.optimizer.lr_at(step)
    metrics = D.policy_update(replica.wrapped, replica.optimizer, batch, advantages, kept, cfg, replica.ctx,
                              max_completion_len=cfg.sampling.max_new_tokens)
    _consolidate(replica, optimizer_too=checkpoint_due)
    replica.step = step + 1
    return metrics


def _consolidate(replica: Replica, optimizer_too: bool) -> None:
    """FSDP2: gather the full weights (and optimizer state) on every rank, kept by rank 0. DDP: nothing to
    do, every rank already holds the whole model and optimizer."""
    if isinstance(replica.wrapped, torch.nn.parallel.DistributedDataParallel):
        return
    replica.full_weights = D.full_state_dict(replica.wrapped, replica.ctx)
    replica.full_optimizer = D.full_optimizer_state(replica.optimizer, replica.ctx) if optimizer_too else None
