"""Data-parallel GRPO/PPO updates with torch.distributed: DDP, or FSDP2 when the model does not fit one device.

Every rank holds the whole step batch (it reads the same stored rollouts) and back-propagates its own
share of each mini-batch's rows. The loss normaliser D is computed over the WHOLE mini-batch, exactly as
in the single-process :func:`rlcadence.trainer.update.policy_update`; each rank's loss is then its rows'
sum divided by D, times the world size, because DDP's all-reduce and FSDP2's reduce-scatter average
gradients over ranks. The averaged gradient is therefore sum_rows / D: the single-process gradient, for
every aggregation (``seq_mean_token_mean``, ``token_mean``, ``token_sum_norm``), ``normalize_by`` and
mini-batch count (tested against one process at float32 tolerance).

Collectives must match across ranks, so every rank runs the same number of backward passes per optimizer
step: a rank with fewer micro-batches than the busiest one pads with a row whose loss is multiplied by 0
(its gradient contribution is exactly 0). Only the last backward of a step synchronises gradients.

Checkpoints are consolidated: every rank takes part in the gathers in the same order (never interleaved
with a point-to-point send: that deadlocks FSDP2 with more than 2 ranks, trl#6797), rank 0 alone keeps the
host copies, and writes the ordinary single-process safetensors checkpoint, which loads at any world size.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from rlcadence.config import OptimizerConfig, RLConfig
from rlcadence.devices import autocast, check_world_size
from rlcadence.objectives import policy_loss
from rlcadence.trainer.checkpoint import Snapshot, TrainerState, frozen_state
from rlcadence.trainer.logprobs import token_logprobs
from rlcadence.trainer.update import (
    MicroBatching,
    PackedBatch,
    _chunks,
    _combine_micro,
    _mini_batch_normalizer,
    _ref_logprobs,
    micro_batches,
    step_and_report,
)

Strategy = Literal["ddp", "fsdp2"]
DEFAULT_TIMEOUT_S = 600.0  # process-group init and every collective: a stuck rank fails, never hangs


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group."""

    rank: int
    world_size: int
    device: torch.device
    backend: str


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> nccl on CUDA, gloo on the CPU."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("train_backend=nccl needs device=cuda; use gloo (or auto) on the CPU")
    return backend


def init(backend: str = "auto", device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S,
         init_method: str | None = None, rank: int | None = None, world_size: int | None = None) -> DistContext:
    """Join the process group: torchrun's environment (``env://``) unless ``init_method``/``rank``/``world_size``
    are given. On CUDA each process takes device ``LOCAL_RANK``. The processes this machine runs
    (``LOCAL_WORLD_SIZE``, else the world size) are checked against its devices before anything starts."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size or os.environ.get("WORLD_SIZE", "1")))
    check_world_size(local_world, device, backend)
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank or 0)))
        torch.cuda.set_device(dev)
    name = resolve_backend(backend, dev)
    kwargs = {k: v for k, v in {"init_method": init_method, "rank": rank, "world_size": world_size}.items()
              if v is not None}
    dist.init_process_group(name, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistContext(dist.get_rank(), dist.get_world_size(), dev, name)


class LogprobModule(torch.nn.Module):
    """The policy as one module whose forward is the trainer's chunked log-probs, so that the forward passes
    through the DDP / FSDP2 wrapper (their hooks), not around it as ``token_logprobs``' body/head split would."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, mask, chunk_tokens: int, entropy: bool = False):
        return token_logprobs(self.lm, input_ids, attention_mask, mask, chunk_tokens, entropy=entropy)


def decoder_layers(lm: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks (Hugging Face names their class in ``_no_split_modules``)."""
    names = set(getattr(lm, "_no_split_modules", None) or [])
    layers = [m for m in lm.modules() if type(m).__name__ in names]
    if not layers:
        raise TypeError(f"{type(lm).__name__}: no decoder layers found for fully_shard (_no_split_modules={names})")
    return layers


def wrap(lm: torch.nn.Module, strategy: Strategy, ctx: DistContext) -> torch.nn.Module:
    """DDP, or FSDP2 ``fully_shard`` on each decoder layer and then on the root. Build the optimizer on the
    returned module's parameters afterwards (FSDP2 replaces them by sharded DTensors)."""
    module = LogprobModule(lm.to(ctx.device))
    if strategy == "ddp":
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if strategy == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        for layer in decoder_layers(lm):
            fully_shard(layer, mesh=mesh)
        return fully_shard(module, mesh=mesh)
    raise ValueError(f"strategy must be ddp or fsdp2, got {strategy!r}")


def inner(wrapped: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a :func:`wrap` result."""
    module = wrapped.module if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else wrapped
    return module.lm


def rank_rows(rows: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous share of ``rows``: sizes differ by at most one (uneven counts are fine)."""
    return rows.tensor_split(world_size)[rank]


def _sync(wrapped: torch.nn.Module, last: bool):
    """Gradient synchronisation on the last backward of an optimizer step only."""
    if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if last else wrapped.no_sync()
    wrapped.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _adam_cosine(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], sharded: bool) -> float | None:
    """cos(exp_avg, grad) over all parameters (as ``diagnostics.adam_moment_grad_cosine``), shards summed."""
    sums = torch.zeros(4, dtype=torch.float64)  # dot, |m|^2, |g|^2, found
    for p in params:
        m = optimizer.state.get(p, {}).get("exp_avg")
        if m is None or p.grad is None:
            continue
        m64, g64 = _local(m).detach().double().cpu(), _local(p.grad).detach().double().cpu()
        sums += torch.stack([(m64 * g64).sum(), (m64 * m64).sum(), (g64 * g64).sum(), torch.tensor(1.0, dtype=torch.float64)])
    if sharded:
        sums = _all_reduce_host(sums)
    dot, sq_m, sq_g, found = sums.tolist()
    return None if not found or sq_m == 0.0 or sq_g == 0.0 else dot / math.sqrt(sq_m * sq_g)


def _all_reduce_host(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce a small host tensor through the group's device (nccl takes only CUDA tensors)."""
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    x = t.to(dev)
    dist.all_reduce(x, op=op)
    return x.cpu()


def optimizer_step(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: OptimizerConfig) -> dict[str, float]:
    """Clip on the global gradient norm (over shards for FSDP2), step, zero: ``update.optimizer_step`` for DTensors."""
    params = [p for p in wrapped.parameters() if p.grad is not None]
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    sharded = not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    return step_and_report(optimizer, norm, _adam_cosine(optimizer, params, sharded))


def _reduce_metrics(local: dict[str, float]) -> dict[str, float]:
    """One optimizer step's metrics over ranks: ``loss/*`` terms add up, ratio max/min are
    the extremes, other means are averaged over the ranks that had rows."""
    gathered: list[dict[str, float]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, local)
    out: dict[str, float] = {}
    for k in {k for d in gathered for k in d}:
        values = [d[k] for d in gathered if k in d]
        if k.startswith("loss/"):
            out[k] = sum(values)
        elif k == "ratio/max":
            out[k] = max(values)
        elif k == "ratio/min":
            out[k] = min(values)
        else:
            out[k] = sum(values) / len(values)
    return out


def _backward_plan(rows: torch.Tensor, lengths: list[int], plan: MicroBatching, ctx: DistContext) -> list[torch.Tensor | None]:
    """This rank's micro-batches of a mini-batch, padded with None up to the busiest rank's count (every rank
    computes every rank's cut locally: the batch is the same everywhere, so no communication is needed)."""
    cuts = [micro_batches(rank_rows(rows, r, ctx.world_size), lengths, plan) for r in range(ctx.world_size)]
    mine = [m for m in cuts[ctx.rank] if len(m)]
    most = max(sum(1 for m in c if len(m)) for c in cuts)
    return mine + [None] * (most - len(mine))


def policy_update(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: PackedBatch,
                  advantages: torch.Tensor, kept: torch.Tensor, cfg: RLConfig, ctx: DistContext,
                  ref_model=None, max_completion_len: int | None = None) -> dict[str, float]:
    """:func:`rlcadence.trainer.update.policy_update` over ``ctx.world_size`` ranks: the same optimizer steps,
    gradients and (reduced) metrics. Call on every rank with the same whole batch."""
    wrapped.train()
    plan, device = MicroBatching.of(cfg), ctx.device
    kept_idx = kept.nonzero().squeeze(1)  # [K]
    max_len = max_completion_len or int(batch.completion_mask.sum(1).max())
    lengths = batch.lengths()
    advantages = advantages.to(device)
    metrics: list[dict[str, float]] = []
    entropy = torch.zeros(2, dtype=torch.float64)  # sum, tokens (this rank)
    for epoch in range(cfg.ppo_epochs):
        for mini in _chunks(len(kept_idx), cfg.mini_batches):
            rows = kept_idx[mini]
            norm = _mini_batch_normalizer(batch, kept, rows, cfg, max_len)
            steps = _backward_plan(rows, lengths, plan, ctx)
            micro_metrics: list[dict[str, float]] = []
            for i, micro in enumerate(steps):
                idx = rows[:1] if micro is None else micro  # padding: one real row, loss x 0
                mb = batch.micro(idx, device)
                with _sync(wrapped, last=i == len(steps) - 1):
                    with autocast(device, plan.bf16_autocast):
                        logp, ent = wrapped(mb.input_ids, mb.attention_mask, mb.completion_mask,
                                            plan.logits_chunk_tokens, entropy=epoch == 0 and micro is not None)
                    out = policy_loss(logp, mb.old_logprobs, advantages[idx.to(device)], mb.completion_mask, norm,
                                      cfg.policy_loss, ref_logprobs=_ref_logprobs(ref_model, mb, plan))
                    (out.loss * (0.0 if micro is None else float(ctx.world_size))).backward()
                if micro is None:
                    continue
                if ent is not None:
                    entropy += torch.tensor([float(ent.sum()), out.metrics["tokens/valid"]], dtype=torch.float64)
                micro_metrics.append(out.metrics)
            if len(rows):
                local = _combine_micro(micro_metrics) if micro_metrics else {}
                metrics.append(_reduce_metrics(local) | optimizer_step(wrapped, optimizer, cfg.optimizer))
    result = {k: sum(d[k] for d in metrics if k in d) / sum(1 for d in metrics if k in d)
              for k in {k for d in metrics for k in d}}
    result["train/rows_backpropagated"] = float(len(kept_idx) * cfg.ppo_epochs)
    if len(kept_idx):
        ent_sum, ent_tokens = _all_reduce_host(entropy).tolist()
        result["train/entropy"] = ent_sum / ent_tokens if ent_tokens else 0.0
    return result


def _full(t):
    """The whole tensor on the host: a collective for a DTensor (every rank must call it, in the same order)."""
    if not isinstance(t, torch.Tensor):
        return t
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().to("cpu", copy=True)


def full_state_dict(wrapped: torch.nn.Module, ctx: DistContext) -> dict[str, torch.Tensor] | None:
    """The model's consolidated weights (Hugging Face names) on rank 0; None on the others. Collective."""
    out = {}
    for name, t in inner(wrapped).state_dict().items():
        full = _full(t)
        if ctx.rank == 0:
            out[name] = full
    return out if ctx.rank == 0 else None


def full_optimizer_state(optimizer: torch.optim.Optimizer, ctx: DistContext) -> dict | None:
    """The optimizer's ``state_dict()`` with every shard gathered, on rank 0 (None elsewhere). Parameter
    indices are the model's parameter order, as in a single-process optimizer. Collective."""
    opt = optimizer.state_dict()
    state = {i: {k: _full(v) for k, v in s.items()} for i, s in opt["state"].items()}
    return {"state": state, "param_groups": opt["param_groups"]} if ctx.rank == 0 else None


def consolidated_snapshot(wrapped: torch.nn.Module, tokenizer, state: TrainerState | None,
                          optimizer: torch.optim.Optimizer | None, ctx: DistContext) -> Snapshot | None:
    """:func:`rlcadence.trainer.checkpoint.snapshot` of a wrapped model: a Snapshot on rank 0 (write it with
    ``write_snapshot``), None on the other ranks. Every rank must call it."""
    weights = full_state_dict(wrapped, ctx)
    opt = full_optimizer_state(optimizer, ctx) if state is not None and optimizer is not None else None
    if ctx.rank != 0:
        return None
    frozen = None if state is None else frozen_state(state, opt if opt is not None else state.optimizer)
    return Snapshot(inner(wrapped), tokenizer, weights, frozen)


def load_optimizer_state(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, full: dict) -> None:
    """Load a consolidated optimizer state (any world size wrote it) into this rank's optimizer: each tensor
    shaped like its parameter is sharded like it (FSDP2); scalars such as ``step`` are kept as they are."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, s in full.get("state", {}).items():
        p = params[int(i)]
        state[int(i)] = {k: (distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                             if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape
                             else v) for k, v in s.items()}
    optimizer.load_state_dict({"state": state, "param_groups": full["param_groups"]})

