"""The trainer's components: optimizer, sequence packing, and one update for SFT, GRPO/PPO and DPO.

Every update takes the whole optimizer batch, splits it into mini-batches (one optimizer step each) and
micro-batches (one backward each, gradients accumulated). Loss normalisers are computed over the whole
mini-batch first, so accumulation gives the one-batch gradient exactly (tested).

Memory scales with the token budget, not with N x T x V: micro-batches are cut by rows and/or tokens
(``MicroBatching``), each is trimmed to its own longest row and moved to the model's device only when
used, and log-probs go through the chunked LM head of ``rlcadence.trainer.logprobs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlcadence.config import OptimizerConfig, RLConfig
from rlcadence.devices import autocast
from rlcadence.objectives import dpo_loss, logprob_agreement, loss_normalizer, policy_loss, tis_weights
from rlcadence.trainer.diagnostics import adam_moment_grad_cosine
from rlcadence.trainer.logprobs import token_logprobs


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.resolved_lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.resolved_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def prepare_for_training(model: torch.nn.Module, cfg: RLConfig) -> torch.nn.Module:
    """Training-time switches of the policy model: activation checkpointing (recompute each decoder
    layer in backward) when ``cfg.activation_checkpointing``. Call once, where the policy is loaded."""
    if cfg.activation_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return model


@dataclass(frozen=True)
class MicroBatching:
    """How an update cuts and computes its backward passes (fields of ``RLConfig``)."""

    rows: int | None = None  # micro_batch_size
    tokens: int | None = None  # max_tokens_per_micro_batch: rows x longest row
    logits_chunk_tokens: int = 1024
    bf16_autocast: bool = True

    @classmethod
    def of(cls, cfg: RLConfig) -> MicroBatching:
        return cls(cfg.micro_batch_size, cfg.max_tokens_per_micro_batch, cfg.logits_chunk_tokens, cfg.bf16_autocast)


@dataclass
class PackedBatch:
    """Prompt+completion sequences, right-padded. Targets are next tokens, so masks are [N, T-1]."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T-1] float; 1 where the target token is a completion token
    old_logprobs: torch.Tensor  # [N, T-1] generator logprobs aligned with completion_mask (0 elsewhere)

    def rows(self, idx: torch.Tensor) -> PackedBatch:
        return PackedBatch(self.input_ids[idx], self.attention_mask[idx], self.completion_mask[idx], self.old_logprobs[idx])

    def lengths(self) -> list[int]:
        """Tokens of each row (prompt + completion), on the host."""
        return self.attention_mask.sum(1).tolist()

    def micro(self, idx: torch.Tensor, device: torch.device) -> PackedBatch:
        """Rows ``idx``, trimmed to their own longest row (right padding: causal outputs unchanged), on ``device``."""
        width = max(int(self.attention_mask[idx].sum(1).max()), 2) if len(idx) else 2
        width = min(width, self.input_ids.shape[1])
        return PackedBatch(self.input_ids[idx, :width].to(device), self.attention_mask[idx, :width].to(device),
                           self.completion_mask[idx, : width - 1].to(device), self.old_logprobs[idx, : width - 1].to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
         completion_logprobs: list[list[float]] | None = None) -> PackedBatch:
    n = len(prompt_ids)
    width = max((len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)), default=1)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    cmask = torch.zeros((n, width - 1))
    old = torch.zeros((n, width - 1))
    for r, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        seq = p + c
        ids[r, : len(seq)] = torch.tensor(seq)
        attn[r, : len(seq)] = 1
        cmask[r, len(p) - 1 : len(seq) - 1] = 1.0  # target t+1 is completion token
        if completion_logprobs is not None:
            old[r, len(p) - 1 : len(seq) - 1] = torch.tensor(completion_logprobs[r])
    return PackedBatch(ids, attn, cmask, old)


def pair_lengths(a: PackedBatch, b: PackedBatch) -> list[int]:
    """Per pair, the longer of its two sequences (DPO cuts micro-batches over pairs)."""
    return [max(x, y) for x, y in zip(a.lengths(), b.lengths(), strict=True)]


def micro_batches(rows: torch.Tensor, lengths: list[int], plan: MicroBatching) -> list[torch.Tensor]:
    """Split ``rows`` (indices into a batch whose row r is ``lengths[r]`` tokens) into backward passes.

    Without a token budget: consecutive runs of ``plan.rows`` rows (or all of them). With one: rows sorted
    by length (ties by index, so the cut is deterministic), then cut greedily so that rows x longest row
    <= ``plan.tokens`` (and <= ``plan.rows`` rows when that is set too).
    """
    if plan.tokens is None:
        return [rows] if plan.rows is None or not len(rows) else list(rows.split(plan.rows))
    order = sorted(rows.tolist(), key=lambda r: (lengths[r], r))
    out: list[list[int]] = []
    for r in order:
        if lengths[r] > plan.tokens:
            raise ValueError(f"a row of {lengths[r]} tokens does not fit max_tokens_per_micro_batch={plan.tokens}")
        current = out[-1] if out else None
        fits = current is not None and (len(current) + 1) * lengths[r] <= plan.tokens  # sorted: r is the longest
        if fits and (plan.rows is None or len(current) < plan.rows):
            current.append(r)
        else:
            out.append([r])
    return [torch.tensor(m, dtype=torch.long) for m in out]


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def forward_logprobs(model, mb: PackedBatch, plan: MicroBatching,
                     entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token logprobs [n, t-1] (0 off the completion) of a micro-batch already on the model's device,
    under bf16 autocast where enabled; the LM head runs in chunks (never [n, t, V] logits)."""
    with autocast(mb.input_ids.device, plan.bf16_autocast):
        return token_logprobs(model, mb.input_ids, mb.attention_mask, mb.completion_mask,
                              plan.logits_chunk_tokens, entropy=entropy)


def _chunks(n: int, parts: int) -> list[torch.Tensor]:
    return [c for c in torch.arange(n).tensor_split(parts) if len(c)]


def optimizer_step(model, optimizer, cfg: OptimizerConfig) -> dict[str, float]:
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return step_and_report(optimizer, norm, adam_moment_grad_cosine(optimizer, params))


def step_and_report(optimizer, grad_norm: float, cosine: float | None) -> dict[str, float]:
    """Apply and clear the gradients; the step's norm (and Adam cosine, when there is one) as metrics."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out = {"train/grad_norm": grad_norm}
    if cosine is not None:
        out["train/adam_grad_cosine"] = cosine
    return out


def sft_update(model, optimizer, batch: PackedBatch, cfg: OptimizerConfig,
               plan: MicroBatching = MicroBatching()) -> dict:
    """Cross-entropy on completion (answer) tokens only, mean over all answer tokens of the batch."""
    model.train()
    device = device_of(model)
    total_tokens = float(batch.completion_mask.sum())
    loss_sum = torch.zeros((), device=device)
    for idx in micro_batches(torch.arange(len(batch)), batch.lengths(), plan):
        mb = batch.micro(idx, device)
        logp, _ = forward_logprobs(model, mb, plan)
        loss = -(logp * mb.completion_mask).sum() / total_tokens
        loss.backward()
        loss_sum += loss.detach()
    return {"train/loss": float(loss_sum), **optimizer_step(model, optimizer, cfg)}


def _combine_micro(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Micro-batch metrics of one optimizer step: ``loss/*`` terms add up (each is already divided by
    the step's normaliser), the others are averaged."""
    out = _average(dicts)
    for k in out:
        if k.startswith("loss/"):
            out[k] = sum(d.get(k, 0.0) for d in dicts)
    return out


def _average(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {k: sum(d[k] for d in dicts if k in d) / sum(1 for d in dicts if k in d) for k in keys}


def _ref_logprobs(ref_model, mb: PackedBatch, plan: MicroBatching) -> torch.Tensor | None:
    """Reference log-probs of a micro-batch: no grad, eval mode, on the reference's own device
    (it may live elsewhere, e.g. offloaded), returned on the micro-batch's device."""
    if ref_model is None:
        return None
    was_training = ref_model.training
    ref_model.eval()
    try:
        with torch.no_grad():
            logp, _ = forward_logprobs(ref_model, mb.micro(torch.arange(len(mb)), device_of(ref_model)), plan)
    finally:
        ref_model.train(was_training)
    return logp.to(mb.input_ids.device)


def _mini_batch_normalizer(batch: PackedBatch, kept: torch.Tensor, rows: torch.Tensor, cfg: RLConfig, max_len: int) -> float:
    """Loss denominator of one optimizer step. With one mini-batch it is exact for every aggregation;
    with several, dropped rows ('all') are shared among mini-batches in proportion to their size."""
    agg, by = cfg.policy_loss.aggregation, cfg.filter.normalize_by
    if cfg.mini_batches == 1:
        return loss_normalizer(batch.completion_mask, kept, agg, max_len, by)
    ones = torch.ones(len(rows), dtype=torch.bool)
    norm = loss_normalizer(batch.completion_mask[rows], ones, agg, max_len, "kept")
    n_kept = int(kept.sum())
    return norm * len(batch) / n_kept if by == "all" and n_kept else norm


def policy_update(model, optimizer, batch: PackedBatch, advantages: torch.Tensor, kept: torch.Tensor,
                  cfg: RLConfig, ref_model=None, max_completion_len: int | None = None) -> dict[str, float]:
    """GRPO / PPO-clip: ``ppo_epochs`` passes x ``mini_batches`` optimizer steps over the kept rows.

    ``train/entropy`` is the mean next-token entropy over the completion tokens of the first pass.
    ``logprob/engine_trainer_abs_diff_*`` compares the generator's log-probs with the trainer's before any
    optimizer step (the first mini-batch; all kept rows with ``tis_cap``, which computes them all first).
    With ``policy_loss.tis_cap`` the PPO ratio is taken against the trainer's own pre-update log-probs and
    each token is weighted by the truncated importance weight (:func:`~rlcadence.objectives.tis_weights`).
    """
    model.train()
    plan, device = MicroBatching.of(cfg), device_of(model)
    kept_idx = kept.nonzero().squeeze(1)  # [K] rows that survive gradient filtering
    max_len = max_completion_len or int(batch.completion_mask.sum(1).max())
    lengths = batch.lengths()
    advantages = advantages.to(device)
    metrics: list[dict[str, float]] = []
    entropy_sum, entropy_tokens = torch.zeros((), device=device), 0.0
    cap = cfg.policy_loss.tis_cap
    is_weights = None
    agreement: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (trainer, engine, mask) pre-update
    if cap is not None and len(kept_idx):
        trainer_old = pre_update_logprobs(model, batch, kept_idx, lengths, plan)  # [N, T-1]
        agreement.append((trainer_old[kept_idx], batch.old_logprobs[kept_idx], batch.completion_mask[kept_idx]))
        is_weights = tis_weights(trainer_old, batch.old_logprobs, batch.completion_mask, cap)  # [N, T-1]
        batch = PackedBatch(batch.input_ids, batch.attention_mask, batch.completion_mask, trainer_old)
    for epoch in range(cfg.ppo_epochs):
        for m, mini in enumerate(_chunks(len(kept_idx), cfg.mini_batches)):
            rows = kept_idx[mini]
            norm = _mini_batch_normalizer(batch, kept, rows, cfg, max_len)
            micro_metrics: list[dict[str, float]] = []
            for micro in micro_batches(rows, lengths, plan):
                mb = batch.micro(micro, device)
                logp, entropy = forward_logprobs(model, mb, plan, entropy=epoch == 0)
                if epoch == 0 and m == 0 and cap is None:  # before any optimizer step: the engine's weights
                    agreement.append((logp.detach(), mb.old_logprobs, mb.completion_mask))
                w = None if is_weights is None else is_weights[micro, : mb.completion_mask.shape[1]].to(device)
                out = policy_loss(logp, mb.old_logprobs, advantages[micro.to(device)], mb.completion_mask, norm,
                                  cfg.policy_loss, ref_logprobs=_ref_logprobs(ref_model, mb, plan), is_weights=w)
                out.loss.backward()
                if entropy is not None:
                    entropy_sum += entropy.sum()
                    entropy_tokens += out.metrics["tokens/valid"]
                micro_metrics.append(out.metrics)
            if len(rows):
                metrics.append(_combine_micro(micro_metrics) | optimizer_step(model, optimizer, cfg.optimizer))
    result = _average(metrics) | _agreement(agreement)
    result["train/rows_backpropagated"] = float(len(kept_idx) * cfg.ppo_epochs)
    if len(kept_idx):
        result["train/entropy"] = float(entropy_sum) / entropy_tokens if entropy_tokens else 0.0
    return result


def _agreement(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """|engine - trainer| log-prob over the micro-batches' valid tokens (each [n, w] of its own width)."""
    if not parts:
        return {}
    flat = [(t[m.to(t.device) > 0], e.to(t.device)[m.to(t.device) > 0]) for t, e, m in parts]
    trainer, engine = torch.cat([t for t, _ in flat]), torch.cat([e for _, e in flat])  # [n]
    return logprob_agreement(trainer, engine, torch.ones_like(trainer))


@torch.no_grad()
def pre_update_logprobs(model, batch: PackedBatch, rows: torch.Tensor, lengths: list[int],
                        plan: MicroBatching) -> torch.Tensor:
    """The trainer's log-probs [N, T-1] of ``rows`` (0 elsewhere) with its weights before the update."""
    out = torch.zeros_like(batch.old_logprobs)  # [N, T-1] on the host, like the batch
    for micro in micro_batches(rows, lengths, plan):
        mb = batch.micro(micro, device_of(model))
        logp, _ = forward_logprobs(model, mb, plan)  # [n, w-1]
        out[micro, : logp.shape[1]] = logp.float().cpu()
    return out


def dpo_update(model, optimizer, chosen: PackedBatch, rejected: PackedBatch, ref_model, cfg: RLConfig) -> dict:
    """DPO on summed sequence logprobs (paper A), optional NLL on the chosen response.

    Micro-batches are cut over pairs (a pair's length is its longer sequence); chosen and rejected rows
    of a micro-batch are each trimmed to their own longest row.
    """
    model.train()
    plan, device = MicroBatching.of(cfg), device_of(model)
    n_pairs = len(chosen)
    if n_pairs == 0:
        return {"dpo/pairs": 0.0, "train/loss": 0.0}
    lengths = pair_lengths(chosen, rejected)
    metrics = []
    for mini in _chunks(n_pairs, cfg.mini_batches):
        micro_metrics = []
        mini_tokens = float(chosen.rows(mini).completion_mask.sum())  # NLL token normalizer of the batch
        for micro in micro_batches(mini, lengths, plan):
            c, r = chosen.micro(micro, device), rejected.micro(micro, device)
            logp_c, _ = forward_logprobs(model, c, plan)
            logp_r, _ = forward_logprobs(model, r, plan)
            ref_c, ref_r = _ref_logprobs(ref_model, c, plan), _ref_logprobs(ref_model, r, plan)
            seq = lambda lp, b: (lp.double() * b.completion_mask).sum(1)  # noqa: E731  [P] float64 sums
            out = dpo_loss(seq(logp_c, c), seq(logp_r, r), seq(ref_c, c), seq(ref_r, r), cfg.dpo,
                           normalizer=float(len(mini)), chosen_nll_sum=-seq(logp_c, c),
                           chosen_tokens=c.completion_mask.sum(1), nll_token_normalizer=mini_tokens)
            out.loss.backward()
            micro_metrics.append(out.metrics)
        metrics.append(_combine_micro(micro_metrics) | optimizer_step(model, optimizer, cfg.optimizer))
    return _average(metrics)
