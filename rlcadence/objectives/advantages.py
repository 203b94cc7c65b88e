"""Group-relative advantages (GRPO, arXiv 2402.03300 eq. 3 / paper A sec. 2 / DASH sec. 3).

    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)     (scale="group")
    A_i = (r_i - mean_g(r)) / (std_B(r) + eps)     (scale="batch": std of every reward of the batch, TRL/Dr. GRPO)
    A_i =  r_i - mean_g(r)                          (scale="none", paper A's text)

Groups are contiguous blocks of ``group_size`` rows: rows [g*G, (g+1)*G) share one prompt. A reward that
could not be computed is NaN (None upstream): it is left out of the mean and std and its advantage is 0
(TRL's nanmean/nanstd), so one failed verification does not turn the whole group's advantages into NaN.
"""

from __future__ import annotations

import torch

from rlcadence.objectives.config import AdvantageConfig


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1 or rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    return rewards.float().view(-1, group_size)  # [B, G]


def _std(x: torch.Tensor, valid: torch.Tensor, dim: int | None, unbiased: bool) -> torch.Tensor:
    """Std of the valid entries of x (along ``dim``, or all of them), population or Bessel-corrected."""
    dims = (dim,) if dim is not None else tuple(range(x.ndim))
    n = valid.sum(dims, keepdim=True)
    mean = (x * valid).sum(dims, keepdim=True) / n.clamp(min=1)
    var = (((x - mean) * valid) ** 2).sum(dims, keepdim=True) / (n - int(unbiased)).clamp(min=1)
    return var.sqrt()


def group_advantages(rewards: torch.Tensor, group_size: int, cfg: AdvantageConfig) -> torch.Tensor:
    """Advantages [B*G] of rewards [B*G] (NaN = no reward). A group whose valid rewards are all equal, or
    with fewer than two, gets A = 0 exactly; a NaN reward gets A = 0."""
    r = _groups(rewards, group_size)  # [B, G]
    valid = ~torch.isnan(r)  # [B, G]
    x = torch.where(valid, r, torch.zeros_like(r))  # [B, G]
    n = valid.sum(1, keepdim=True)  # [B, 1]
    centred = x - (x * valid).sum(1, keepdim=True) / n.clamp(min=1)  # [B, G]
    if cfg.scale != "none":
        if cfg.unbiased_std and group_size < 2:
            raise ValueError("unbiased_std needs group_size >= 2")
        std = _std(x, valid, 1 if cfg.scale == "group" else None, cfg.unbiased_std)  # [B, 1] or [1, 1]
        centred = centred / (std + cfg.eps).clamp_min(torch.finfo(r.dtype).tiny)
    # A group of identical rewards carries no signal: force exact zeros (the float mean of equal values can
    # be off by an ulp, and with eps = 0 that ulp would be divided by a ~0 std).
    hi = r.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)  # [B, 1]
    lo = r.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)  # [B, 1]
    uniform = (hi == lo) | (n < 2)  # [B, 1]
    return centred.masked_fill(uniform | ~valid, 0.0).reshape(-1)  # [B*G]


def zero_advantage_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all exactly equal (A = 0 for every row: no policy gradient).

    With binary rewards these are the all-correct / all-wrong prompts that DASH's filter drops.
    """
    r = _groups(rewards, group_size)  # [B, G]
    if r.shape[0] == 0:
        return 0.0
    return float((r.amax(dim=1) == r.amin(dim=1)).float().mean())
