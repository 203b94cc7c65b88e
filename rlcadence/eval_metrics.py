"""Evaluation metrics over k samples per prompt: mean@k, pass@k, maj@k, length and truncation.

Pure functions of plain lists, no model and no I/O. A sample is *correct* when its reward is >= 1 (the
convention of ``reward/accuracy``: binary verifiers give 1.0 for correct).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021, arXiv 2107.03374,
    eq. 1): ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so no binomial
    coefficient overflows (their numerically stable form)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"correct count c={c} outside 0..n={n}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_at_k(rewards: Sequence[float]) -> float:
    """Mean reward over one prompt's k samples; a missing reward (NaN) is left out (NaN if all are)."""
    finite = [r for r in rewards if not math.isnan(r)]
    return sum(finite) / len(finite) if finite else math.nan


def majority_index(keys: Sequence[str | None]) -> int | None:
    """Index of the first sample carrying the most frequent answer key (ties: the answer seen first);
    None when no sample has an answer."""
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)


def maj_at_k(keys: Sequence[str | None], correct: Sequence[bool]) -> float:
    """1.0 when the majority answer (over normalised answer keys) is correct, else 0.0 (no answer: 0)."""
    i = majority_index(keys)
    return float(correct[i]) if i is not None else 0.0


def summarize(rewards: list[list[float]], keys: list[list[str | None]] | None, lengths: list[list[int]],
              truncated: list[list[bool]], pass_ks: list[int]) -> dict[str, float]:
    """Per-set figures, each a mean over prompts of a per-prompt value; inputs are ``[prompts][k]``.

    ``keys`` None: a non-verifiable set (reward-model or judge scores): mean@k only, no pass@k or maj@k.
    """
    if not rewards:
        raise ValueError("no prompts to summarize")
    k = len(rewards[0])
    if any(len(r) != k for r in rewards):
        raise ValueError("every prompt needs the same number of samples")
    flat_len = [x for row in lengths for x in row]
    out = {
        f"mean_at_{k}": _mean([mean_at_k(r) for r in rewards]),
        "mean_length": sum(flat_len) / len(flat_len),
        "truncated_fraction": sum(x for row in truncated for x in row) / len(flat_len),
        "n_prompts": float(len(rewards)),
    }
    if keys is not None:
        correct = [[r >= 1.0 for r in row] for row in rewards]  # NaN >= 1 is False
        for j in pass_ks:
            out[f"pass_at_{j}"] = _mean([pass_at_k(k, sum(c), j) for c in correct])
        out[f"maj_at_{k}"] = _mean([maj_at_k(kk, c) for kk, c in zip(keys, correct, strict=True)])
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
