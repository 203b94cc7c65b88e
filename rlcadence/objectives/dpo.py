"""DPO (Rafailov et al., arXiv 2305.18290, eq. 7) on summed sequence logprobs, with paper A's pair selection.

    L = -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))
        + nll_weight * NLL(y_w)

    NLL, nll_normalization="token" (TRL): sum over all chosen tokens of the batch of -log pi / their count;
    nll_normalization="sequence": mean over pairs of each chosen response's per-token mean of -log pi.
    Chosen lengths 5, 3, 1 with per-token NLL 1, 2, 3: token (5 + 6 + 3) / 9 = 1.556, sequence (1+2+3)/3 = 2.

Metrics (margin, accuracy) are computed in float64 from the summed logprobs: with policy == reference the
float32 noise of two forward passes must not count as a positive margin.

Pair selection (paper A, arXiv 2506.21495 sec. 3): verifiable tasks pair a random correct response with a
random incorrect one; reward-model tasks pair the highest score with the lowest. Groups with no valid pair
are skipped and counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rlcadence.objectives.config import DPOConfig
from rlcadence.objectives.policy_loss import LossOutput


@dataclass
class PairSelection:
    chosen: list[int] = field(default_factory=list)  # global row indices into the [B*G] batch
    rejected: list[int] = field(
        default_factory=list
    )  # same length as chosen; pair k = (chosen[k], rejected[k])
    skipped_groups: int = 0  # groups with no valid pair (all correct, all incorrect, or all tied)


def _group_rows(values: torch.Tensor, group_size: int) -> list[list[float]]:
    if group_size < 1 or values.ndim != 1 or values.numel() % group_size:
        raise ValueError(f"values of shape {tuple(values.shape)} do not split into groups of {group_size}")
    return values.detach().float().view(-1, group_size).tolist()  # [B][G]


def select_pairs_verifiable(
    rewards: torch.Tensor, group_size: int, rng: random.Random, threshold: float = 1.0
) -> PairSelection:
    """Per group: chosen = a random correct row (reward >= threshold), rejected = a random incorrect one
    (reward < threshold). Default threshold 1.0 suits binary 0/1 rewards (Math-Verify); pass e.g. 0.5 for
    partial credit. For each group with a pair, ``rng.choice`` is called on the correct rows, then on the
    incorrect ones (in row order), so a seeded rng gives reproducible pairs.
    """
    out = PairSelection()
    for g, group in enumerate(_group_rows(rewards, group_size)):
        base = g * group_size
        correct = [base + j for j, r in enumerate(group) if r >= threshold]
        incorrect = [base + j for j, r in enumerate(group) if r < threshold]
        if not correct or not incorrect:
            out.skipped_groups += 1
            continue
        out.chosen.append(rng.choice(correct))
        out.rejected.append(rng.choice(incorrect))
    return out


def select_pairs_scored(scores: torch.Tensor, group_size: int) -> PairSelection:
    """Per group: chosen = highest score, rejected = lowest (first index on ties); all-tied groups skipped.
    NaN scores (no reward) are never chosen or rejected (a verifiable group's NaN is neither >= nor < threshold)."""
    out = PairSelection()
    for g, group in enumerate(_group_rows(scores, group_size)):
        valid = [s for s in group if s == s]  # NaN != NaN
        hi, lo = (max(valid), min(valid)) if valid else (0.0, 0.0)
        if hi == lo:
            out.skipped_groups += 1
            continue
        out.chosen.append(g * group_size + group.index(hi))
        out.rejected.append(g * group_size + group.index(lo))
    return out


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    cfg: DPOConfig,
    normalizer: float,
    chosen_nll_sum: torch.Tensor | None = None,
    chosen_tokens: torch.Tensor | None = None,
    nll_token_normalizer: float | None = None,
) -> LossOutput:
    """Summed DPO (+ NLL) loss of these P pairs divided by ``normalizer`` (pairs in the whole optimizer batch).

    All logps are [P] summed sequence logprobs (float64 sums recommended); ref logps are constants.
    ``chosen_nll_sum`` [P]: sum of -log pi over each chosen response's tokens (with gradient), ``chosen_tokens``
    [P] their counts; ``nll_token_normalizer``: chosen tokens in the whole optimizer batch (token mode), so
    micro-batches add up to the batch's token mean. With P == 0 the loss is the sum over the empty inputs:
    a 0 that is connected to the graph iff the policy inputs require grad.
    """
    p = policy_chosen_logps.shape[0]
    if cfg.nll_weight > 0 and (chosen_nll_sum is None or chosen_tokens is None):
        raise ValueError("nll_weight > 0 needs chosen_nll_sum and chosen_tokens")
    if p and normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    scale = 1.0 / normalizer if p else 1.0  # P == 0: nothing to divide; avoids 0/0 when normalizer is 0
    chosen_reward = policy_chosen_logps - ref_chosen_logps.detach()  # [P] implicit reward / beta
    rejected_reward = policy_rejected_logps - ref_rejected_logps.detach()  # [P]
    logits = cfg.beta * (chosen_reward - rejected_reward)  # [P]
    loss_dpo = -F.logsigmoid(logits).sum() * scale
    loss_nll = torch.zeros((), dtype=loss_dpo.dtype, device=loss_dpo.device)
    if cfg.nll_weight > 0 and p:
        loss_nll = cfg.nll_weight * _nll(chosen_nll_sum, chosen_tokens, cfg, scale, nll_token_normalizer)
    with torch.no_grad():
        margin = cfg.beta * ((policy_chosen_logps.double() - ref_chosen_logps.double())
                             - (policy_rejected_logps.double() - ref_rejected_logps.double()))  # [P] float64
        metrics = {
            "loss/dpo": loss_dpo.item(),
            "loss/nll": loss_nll.item(),
            "dpo/reward_margin": float(margin.mean()) if p else 0.0,
            "dpo/reward_accuracy": float((margin > 0).double().mean()) if p else 0.0,
            "dpo/pairs": float(p),
        }
    return LossOutput(loss=loss_dpo + loss_nll, metrics=metrics)


def _nll(nll_sum: torch.Tensor, tokens: torch.Tensor, cfg: DPOConfig, pair_scale: float,
         token_normalizer: float | None) -> torch.Tensor:
    """The NLL term of these pairs (before nll_weight), normalized as ``cfg.nll_normalization`` says."""
    if cfg.nll_normalization == "sequence":
        return (nll_sum / tokens.clamp(min=1)).sum() * pair_scale  # mean of per-response means
    if token_normalizer is None:
        token_normalizer = float(tokens.sum())  # these pairs are the whole batch
    return nll_sum.sum() / max(token_normalizer, 1.0)  # token mean over the batch (TRL)
