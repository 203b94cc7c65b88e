"""PPO-clip policy loss with an optional KL penalty, aggregated so micro-batches accumulate exactly.

Per valid token t of row i (PPO, arXiv 1707.06347 eq. 7; GRPO, arXiv 2402.03300 eq. 3):

    rho_it = exp(logp_it - old_logp_it)
    l_it   = -min(rho_it * A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) * A_i) + beta * KL_it
    clip_delta (INTELLECT-2 / TRL delta): the first rho_it is min(rho_it, delta) (two-sided clipping);
    kl_bias_correction (DeepSeek-V3.2 / TRL use_bias_correction_kl): KL_it is multiplied by rho_it.
    is_weights w_it (truncated importance sampling, ``tis_cap``): the policy-gradient term is w_it * l_it,
    w_it = min(exp(trainer_old_it - engine_it), C) computed by :func:`tis_weights`, no gradient.

With one gradient step per generated batch rho == 1 and this is the vanilla policy gradient (DASH).
Aggregation (``PolicyLossConfig.aggregation``), with D = ``normalizer`` from ``loss_normalizer``:

    seq_mean_token_mean   sum_i mean_t l_it / D,   D = rows
    token_mean            sum_it l_it / D,         D = valid tokens
    token_sum_norm        sum_it l_it / D,         D = rows x max_completion_len   (DASH / TRL dr_grpo)

Every term is a sum over rows divided by a constant, so gradients of micro-batches, each divided by the
normalizer of the whole optimizer batch, add up to the one-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from rlcadence.objectives.config import PolicyLossConfig
from rlcadence.objectives.kl import kl_estimate

Aggregation = Literal["seq_mean_token_mean", "token_sum_norm", "token_mean"]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, to back-propagate
    metrics: dict[str, float] = field(default_factory=dict)  # namespaced, e.g. "loss/policy"


def loss_normalizer(
    mask: torch.Tensor,
    kept: torch.Tensor,
    aggregation: Aggregation,
    max_completion_len: int,
    normalize_by: Literal["kept", "all"],
) -> float:
    """Denominator D of the loss, computed once over the whole optimizer batch.

    mask [N, L] marks valid completion tokens of all N rows; kept [N] is the gradient-filter mask.
    normalize_by="kept" counts only kept rows (DASH: the surviving gradient is scaled up by N/kept);
    "all" counts every row. Returns 1.0 when the count is 0 (nothing kept), so the loss of an empty
    batch is 0 rather than NaN.
    """
    if mask.shape[0] != kept.shape[0]:
        raise ValueError(f"mask has {mask.shape[0]} rows but kept has {kept.shape[0]}")
    rows = kept.bool() if normalize_by == "kept" else torch.ones_like(kept, dtype=torch.bool)  # [N]
    if aggregation == "seq_mean_token_mean":
        count = float(rows.sum())
    elif aggregation == "token_mean":
        count = float((mask[rows] > 0).sum())
    elif aggregation == "token_sum_norm":
        if max_completion_len < 1:
            raise ValueError(f"max_completion_len must be >= 1, got {max_completion_len}")
        longest = int((mask[rows] > 0).sum(1).max()) if bool(rows.any()) else 0
        if longest > max_completion_len:
            raise ValueError(f"a row has {longest} valid tokens > max_completion_len={max_completion_len}")
        count = float(rows.sum()) * max_completion_len
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    return count if count > 0 else 1.0


def _aggregate(x: torch.Tensor, valid: torch.Tensor, aggregation: Aggregation) -> torch.Tensor:
    """Sum over rows of the row's token mean (seq_mean_token_mean) or the plain token sum (others)."""
    if aggregation == "seq_mean_token_mean":
        return (x.sum(1) / valid.sum(1).clamp(min=1)).sum()  # sum_i mean_t
    return x.sum()


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    normalizer: float,
    cfg: PolicyLossConfig,
    ref_logprobs: torch.Tensor | None = None,
    is_weights: torch.Tensor | None = None,
) -> LossOutput:
    """PPO-clip (+ beta * KL) loss of the rows given (pass only kept rows), divided by ``normalizer``.

    logprobs, old_logprobs, ref_logprobs, mask: [N, L]; advantages: [N]. Only ``logprobs`` receives
    gradient. ``loss/policy`` and ``loss/kl`` add up over micro-batches; the other metrics are means
    over this call's ``tokens/valid`` valid tokens (0 when there are none).
    """
    if normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    if cfg.kl_beta > 0 and ref_logprobs is None:
        raise ValueError("kl_beta > 0 needs ref_logprobs")
    valid = mask > 0  # [N, L]
    # Padding positions are zeroed *before* exp so that huge/inf values there cannot produce NaN gradients.
    logp = logprobs.masked_fill(~valid, 0.0)  # [N, L]
    old = old_logprobs.detach().to(logp.dtype).masked_fill(~valid, 0.0)  # [N, L]
    adv = advantages.detach().to(logp.dtype).unsqueeze(1)  # [N, 1]

    ratio = torch.exp(logp - old)  # [N, L]
    lo, hi = 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high
    capped = ratio if cfg.clip_delta is None else ratio.clamp(max=cfg.clip_delta)  # [N, L] two-sided clip
    surrogate = torch.minimum(capped * adv, ratio.clamp(lo, hi) * adv)  # [N, L]
    if is_weights is not None:
        surrogate = surrogate * is_weights.detach().to(logp.dtype)  # [N, L] truncated IS weight per token
    pg = (-surrogate).masked_fill(~valid, 0.0)  # [N, L]
    clipped = ((ratio > hi) & (adv > 0)) | ((ratio < lo) & (adv < 0))  # [N, L] min() took the clipped side
    if cfg.clip_delta is not None:
        clipped = clipped | ((ratio > cfg.clip_delta) & (adv < 0))  # [N, L] capped at delta

    kl = torch.zeros_like(pg)  # [N, L]
    if ref_logprobs is not None:
        ref = ref_logprobs.detach().to(logp.dtype).masked_fill(~valid, 0.0)  # [N, L]
        kl = kl_estimate(logp, ref, cfg.kl_estimator)  # [N, L]
        if cfg.kl_bias_correction:
            kl = ratio * kl  # [N, L] importance-weighted: samples came from pi_old
        kl = kl.masked_fill(~valid, 0.0)  # [N, L]

    loss_pg = _aggregate(pg, valid, cfg.aggregation) / normalizer
    loss_kl = cfg.kl_beta * _aggregate(kl, valid, cfg.aggregation) / normalizer
    loss = loss_pg + loss_kl if cfg.kl_beta > 0 else loss_pg

    n = int(valid.sum())
    with torch.no_grad():
        r = ratio[valid]  # [n]
        metrics = {
            "loss/policy": loss_pg.item(),
            "loss/kl": loss_kl.item(),
            "kl/mean": float(kl.sum()) / n if n else 0.0,
            "clip/fraction": float(clipped[valid].float().mean()) if n else 0.0,
            "ratio/mean": float(r.mean()) if n else 0.0,
            "ratio/max": float(r.max()) if n else 0.0,
            "ratio/min": float(r.min()) if n else 0.0,
            "tokens/valid": float(n),
        }
        if is_weights is not None:
            metrics["tis/weight_mean"] = float(is_weights[valid].mean()) if n else 0.0
    return LossOutput(loss=loss, metrics=metrics)


def tis_weights(trainer_old: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights min(exp(trainer_old - engine), cap) per token [N, L] (1 off the mask).

    trainer_old: the trainer's log-probs of the sampled tokens before the update; engine: the generator's.
    """
    w = torch.exp(trainer_old.detach() - engine.detach()).clamp(max=cap)  # [N, L]
    return w.masked_fill(mask <= 0, 1.0)


def logprob_agreement(trainer: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean and max over valid tokens of |engine - trainer| log-prob (trl#4772: a silent mismatch between the
    generator's and the trainer's numerics biases the update; this is the number to watch)."""
    valid = mask > 0  # [N, L]
    if not bool(valid.any()):
        return {}
    diff = (engine.detach().double() - trainer.detach().double()).abs()[valid]  # [n]
    return {"logprob/engine_trainer_abs_diff_mean": float(diff.mean()),
            "logprob/engine_trainer_abs_diff_max": float(diff.max())}
