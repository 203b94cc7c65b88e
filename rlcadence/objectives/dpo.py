"""DPO (Rafailov et al., arXiv 2305.18290, eq. 7) on summed sequence logprobs, with paper A's pair selection.

    L = -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))
        + nll_weight * NLL(y_w)                                       (NLL = per-token mean of -log pi(y_w))

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
    """Per group: chosen = highest score, rejected = lowest (first index on ties); all-tied groups skipped."""
    out = PairSelection()
    for g, group in enumerate(_group_rows(scores, group_size)):
        hi, lo = max(group), min(group)
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
    chosen_nll: torch.Tensor | None = None,
) -> LossOutput:
    """Summed DPO (+ NLL) loss of these P pairs divided by ``normalizer`` (pairs in the whole optimizer batch).

    All logps are [P] summed sequence logprobs; ref logps are constants. ``chosen_nll`` [P] is the per-token
    mean NLL of each chosen response (with gradient). With P == 0 the loss is the sum over the empty
    inputs: a 0 that is connected to the graph iff the policy inputs require grad.
    """
    p = policy_chosen_logps.shape[0]
    if cfg.nll_weight > 0 and chosen_nll is None:
        raise ValueError("nll_weight > 0 needs chosen_nll")
    if p and normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    scale = 1.0 / normalizer if p else 1.0  # P == 0: nothing to divide; avoids 0/0 when normalizer is 0
    chosen_reward = policy_chosen_logps - ref_chosen_logps.detach()  # [P] implicit reward / beta
    rejected_reward = policy_rejected_logps - ref_rejected_logps.detach()  # [P]
    logits = cfg.beta * (chosen_reward - rejected_reward)  # [P]
    loss_dpo = -F.logsigmoid(logits).sum() * scale
    loss_nll = torch.zeros((), dtype=loss_dpo.dtype, device=loss_dpo.device)
    if cfg.nll_weight > 0:
        loss_nll = cfg.nll_weight * chosen_nll.sum() * scale
    with torch.no_grad():
        metrics = {
            "loss/dpo": loss_dpo.item(),
            "loss/nll": loss_nll.item(),
            "dpo/reward_margin": float(logits.mean()) if p else 0.0,
            "dpo/reward_accuracy": float((logits > 0).float().mean()) if p else 0.0,
            "dpo/pairs": float(p),
        }
    return LossOutput(loss=loss_dpo + loss_nll, metrics=metrics)
