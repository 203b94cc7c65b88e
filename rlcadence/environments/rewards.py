"""Several reward functions for one environment, combined with weights (TRL's reward_funcs + reward_weights).

    sum             r_i = sum_k w_k * r_ik
    normalized_sum  r_i = sum_k w_k * z_k(r_ik),  z_k = (r_k - mean_batch(r_k)) / std_batch(r_k)  (0 if std = 0)

A NaN term (its function returned None: no reward) is left out of its own batch statistics and of the sum
(TRL's nansum); a row whose every term is NaN stays NaN, so the advantage leaves it out as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Combination = Literal["sum", "normalized_sum"]


def _zscore(values: Sequence[float]) -> list[float]:
    """Population z-score over the non-NaN values (NaN stays NaN; all-equal give 0)."""
    ok = [v for v in values if not math.isnan(v)]
    if not ok:
        return list(values)
    mean = sum(ok) / len(ok)
    std = math.sqrt(sum((v - mean) ** 2 for v in ok) / len(ok))
    return [v if math.isnan(v) else ((v - mean) / std if std > 0 else 0.0) for v in values]


def combine_rewards(per_term: Sequence[Sequence[float]], weights: Sequence[float], mode: Combination) -> list[float]:
    """Rewards [N] from K terms' rewards [K][N] and K weights."""
    if len(per_term) != len(weights) or not per_term:
        raise ValueError(f"{len(per_term)} reward terms but {len(weights)} weights")
    terms = [_zscore(t) for t in per_term] if mode == "normalized_sum" else [list(t) for t in per_term]
    out = []
    for row in zip(*terms, strict=True):
        parts = [w * v for w, v in zip(weights, row, strict=True) if not math.isnan(v)]
        out.append(sum(parts) if parts else math.nan)
    return out
