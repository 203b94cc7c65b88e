"""Per-token KL(pi || pi_ref) estimators from samples of pi (J. Schulman, "Approximating KL Divergence",
http://joschu.net/blog/kl-approx.html). With d = logp - ref_logp (= log pi/pi_ref at the sampled token):

    k1 = d                         unbiased, high variance, can be negative
    k2 = d^2 / 2                   biased, low variance, >= 0
    k3 = exp(-d) - (-d) - 1        unbiased, low variance, >= 0  (GRPO eq. 4, DASH)
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs  # [N, L]


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2  # [N, L]


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    log_ratio = ref_logprobs - logprobs  # [N, L] log(pi_ref / pi)
    return torch.exp(log_ratio) - log_ratio - 1  # [N, L]


_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k3"
) -> torch.Tensor:
    """Per-token KL estimate, same shape as ``logprobs``. ``ref_logprobs`` is treated as a constant."""
    if estimator not in _ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {sorted(_ESTIMATORS)}")
    return _ESTIMATORS[estimator](logprobs, ref_logprobs.detach())
