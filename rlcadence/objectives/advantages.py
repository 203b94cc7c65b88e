"""Group-relative advantages (GRPO, arXiv 2402.03300 eq. 3 / paper A sec. 2 / DASH sec. 3).

    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)     (std_normalize=True)
    A_i =  r_i - mean_g(r)                          (std_normalize=False, paper A's text)

Groups are contiguous blocks of ``group_size`` rows: rows [g*G, (g+1)*G) share one prompt.
"""

from __future__ import annotations

import torch

from rlcadence.objectives.config import AdvantageConfig


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1 or rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    return rewards.float().view(-1, group_size)  # [B, G]


def group_advantages(rewards: torch.Tensor, group_size: int, cfg: AdvantageConfig) -> torch.Tensor:
    """Advantages [B*G] of rewards [B*G]. A group whose rewards are all equal gets A = 0 exactly."""
    r = _groups(rewards, group_size)  # [B, G]
    centred = r - r.mean(dim=1, keepdim=True)  # [B, G]
    if cfg.std_normalize:
        if cfg.unbiased_std and group_size < 2:
            raise ValueError("unbiased_std needs group_size >= 2")
        std = r.std(dim=1, keepdim=True, correction=1 if cfg.unbiased_std else 0)  # [B, 1]
        centred = centred / (std + cfg.eps).clamp_min(torch.finfo(r.dtype).tiny)
    # A group of identical rewards carries no signal: force exact zeros (the float mean of equal values can
    # be off by an ulp, and with eps = 0 that ulp would be divided by a ~0 std).
    uniform = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)  # [B, 1]
    return centred.masked_fill(uniform, 0.0).reshape(-1)  # [B*G]


def zero_advantage_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all exactly equal (A = 0 for every row: no policy gradient).

    With binary rewards these are the all-correct / all-wrong prompts that DASH's filter drops.
    """
    r = _groups(rewards, group_size)  # [B, G]
    if r.shape[0] == 0:
        return 0.0
    return float((r.amax(dim=1) == r.amin(dim=1)).float().mean())
