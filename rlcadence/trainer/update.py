"""The trainer's components: optimizer, sequence packing, and one update for SFT, GRPO/PPO and DPO.

Every update takes the whole optimizer batch, splits it into mini-batches (one optimizer step each) and
micro-batches (one backward each, gradients accumulated). Loss normalisers are computed over the whole
mini-batch first, so accumulation gives the one-batch gradient exactly (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlcadence.config import OptimizerConfig, RLConfig
from rlcadence.objectives import (
    dpo_loss,
    loss_normalizer,
    masked_entropy,
    masked_token_logprobs,
    policy_loss,
)
from rlcadence.trainer.diagnostics import adam_moment_grad_cosine


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.resolved_lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.resolved_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass
class PackedBatch:
    """Prompt+completion sequences, right-padded. Targets are next tokens, so masks are [N, T-1]."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T-1] float; 1 where the target token is a completion token
    old_logprobs: torch.Tensor  # [N, T-1] generator logprobs aligned with completion_mask (0 elsewhere)

    def rows(self, idx: torch.Tensor) -> PackedBatch:
        return PackedBatch(self.input_ids[idx], self.attention_mask[idx], self.completion_mask[idx], self.old_logprobs[idx])

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


def forward_logprobs(model, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(token logprobs [N, T-1], logits [N, T, V]) of the batch under ``model``."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()  # [N, T, V]
    return masked_token_logprobs(logits, batch.input_ids), logits


def _chunks(n: int, parts: int) -> list[torch.Tensor]:
    return [c for c in torch.arange(n).tensor_split(parts) if len(c)]


def _micro(idx: torch.Tensor, size: int | None) -> list[torch.Tensor]:
    return [idx] if size is None else list(idx.split(size))


def optimizer_step(model, optimizer, cfg: OptimizerConfig) -> dict[str, float]:
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    cosine = adam_moment_grad_cosine(optimizer, params)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out = {"train/grad_norm": norm}
    if cosine is not None:
        out["train/adam_grad_cosine"] = cosine
    return out


def sft_update(model, optimizer, batch: PackedBatch, cfg: OptimizerConfig, micro_batch_size: int | None = None) -> dict:
    """Cross-entropy on completion (answer) tokens only, mean over all answer tokens of the batch."""
    model.train()
    total_tokens = float(batch.completion_mask.sum())
    loss_sum = 0.0
    for idx in _micro(torch.arange(len(batch)), micro_batch_size):
        mb = batch.rows(idx)
        logp, _ = forward_logprobs(model, mb)
        loss = -(logp * mb.completion_mask).sum() / total_tokens
        loss.backward()
        loss_sum += float(loss.detach())
    return {"train/loss": loss_sum, **optimizer_step(model, optimizer, cfg)}


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


def _ref_logprobs(ref_model, batch: PackedBatch) -> torch.Tensor | None:
    if ref_model is None:
        return None
    with torch.no_grad():
        return forward_logprobs(ref_model, batch)[0]


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
    """GRPO / PPO-clip: ``ppo_epochs`` passes x ``mini_batches`` optimizer steps over the kept rows."""
    model.train()
    kept_idx = kept.nonzero().squeeze(1)  # [K] rows that survive gradient filtering
    max_len = max_completion_len or int(batch.completion_mask.sum(1).max())
    metrics: list[dict[str, float]] = []
    entropy = None
    for _epoch in range(cfg.ppo_epochs):
        for mini in _chunks(len(kept_idx), cfg.mini_batches):
            rows = kept_idx[mini]
            norm = _mini_batch_normalizer(batch, kept, rows, cfg, max_len)
            micro_metrics: list[dict[str, float]] = []
            for micro in _micro(rows, cfg.micro_batch_size):
                mb = batch.rows(micro)
                logp, logits = forward_logprobs(model, mb)
                out = policy_loss(logp, mb.old_logprobs, advantages[micro], mb.completion_mask, norm,
                                  cfg.policy_loss, ref_logprobs=_ref_logprobs(ref_model, mb))
                out.loss.backward()
                if entropy is None:
                    entropy = masked_entropy(logits.detach()[:, :-1], mb.completion_mask)
                micro_metrics.append(out.metrics)
            if len(rows):
                metrics.append(_combine_micro(micro_metrics) | optimizer_step(model, optimizer, cfg.optimizer))
    result = _average(metrics)
    result["train/rows_backpropagated"] = float(len(kept_idx) * cfg.ppo_epochs)
    if entropy is not None:
        result["train/entropy"] = entropy
    return result


def dpo_update(model, optimizer, chosen: PackedBatch, rejected: PackedBatch, ref_model, cfg: RLConfig) -> dict:
    """DPO on summed sequence logprobs (paper A), optional NLL on the chosen response."""
    model.train()
    n_pairs = len(chosen)
    if n_pairs == 0:
        return {"dpo/pairs": 0.0, "train/loss": 0.0}
    metrics = []
    for mini in _chunks(n_pairs, cfg.mini_batches):
        micro_metrics = []
        mini_tokens = float(chosen.rows(mini).completion_mask.sum())  # NLL token normalizer of the batch
        for micro in _micro(mini, cfg.micro_batch_size):
            c, r = chosen.rows(micro), rejected.rows(micro)
            logp_c, _ = forward_logprobs(model, c)
            logp_r, _ = forward_logprobs(model, r)
            ref_c, ref_r = _ref_logprobs(ref_model, c), _ref_logprobs(ref_model, r)
            seq = lambda lp, b: (lp.double() * b.completion_mask).sum(1)  # noqa: E731  [P] float64 sums
            out = dpo_loss(seq(logp_c, c), seq(logp_r, r), seq(ref_c, c), seq(ref_r, r), cfg.dpo,
                           normalizer=float(len(mini)), chosen_nll_sum=-seq(logp_c, c),
                           chosen_tokens=c.completion_mask.sum(1), nll_token_normalizer=mini_tokens)
            out.loss.backward()
            micro_metrics.append(out.metrics)
        metrics.append(_combine_micro(micro_metrics) | optimizer_step(model, optimizer, cfg.optimizer))
    return _average(metrics)
