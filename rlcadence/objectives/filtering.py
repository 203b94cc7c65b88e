"""DASH gradient filtering (arXiv 2505.17218, sec. 4.2): back-propagate row i only if |A_i| > tau.

With binary rewards and std-normalised advantages this drops exactly the all-correct / all-wrong groups
(A = 0). How the loss is then normalised (by kept rows or all rows) is ``FilterConfig.normalize_by``,
applied by ``loss_normalizer``.
"""

from __future__ import annotations

import torch


def gradient_filter_mask(advantages: torch.Tensor, tau: float | None) -> torch.Tensor:
    """Bool keep-mask [N] of advantages [N]: |A| > tau (strict); all True when tau is None."""
    if tau is None:
        return torch.ones_like(advantages, dtype=torch.bool)  # [N]
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    return advantages.abs() > tau  # [N]
