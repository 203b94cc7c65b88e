"""Pure math of the training objectives: advantages, gradient filtering, KL, PPO/GRPO and DPO losses."""

from rlcadence.objectives.advantages import group_advantages, zero_advantage_group_fraction
from rlcadence.objectives.config import AdvantageConfig, DPOConfig, FilterConfig, PolicyLossConfig
from rlcadence.objectives.dpo import (
    PairSelection,
    dpo_loss,
    select_pairs_scored,
    select_pairs_verifiable,
)
from rlcadence.objectives.filtering import gradient_filter_mask
from rlcadence.objectives.kl import kl_estimate, kl_k1, kl_k2, kl_k3
from rlcadence.objectives.policy_loss import (
    LossOutput,
    logprob_agreement,
    loss_normalizer,
    policy_loss,
    tis_weights,
)
from rlcadence.objectives.sequence import masked_entropy, masked_token_logprobs, sequence_logprob_sum

__all__ = [
    "AdvantageConfig",
    "DPOConfig",
    "FilterConfig",
    "LossOutput",
    "PairSelection",
    "PolicyLossConfig",
    "dpo_loss",
    "gradient_filter_mask",
    "group_advantages",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "tis_weights",
    "logprob_agreement",
    "loss_normalizer",
    "masked_entropy",
    "masked_token_logprobs",
    "policy_loss",
    "select_pairs_scored",
    "select_pairs_verifiable",
    "sequence_logprob_sum",
    "zero_advantage_group_fraction",
]
