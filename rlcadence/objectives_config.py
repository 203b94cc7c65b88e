"""Knobs of the training objectives (re-exported as ``rlcadence.objectives.config``).

Outside the package so that validating a config never runs ``rlcadence/objectives/__init__`` (torch).
Where a paper's text and its reference code disagree, a field
selects each behaviour; the description states the default and why.

Papers: A = "Bridging Offline and Online RL for LLMs" (arXiv 2506.21495); B = DASH (arXiv 2505.17218).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from rlcadence.strict import Strict


class _Strict(Strict):
    model_config = ConfigDict(validate_assignment=True)


class AdvantageConfig(_Strict):
    """Group-relative advantage A_i = (r_i - mean_g(r)) [/ (std_g(r) + eps)] over each prompt's G samples."""

    scale: Literal["group", "batch", "none"] = Field(
        "group",
        description="What r - mean_g(r) is divided by (TRL's scale_rewards): group (default; paper A's code, DASH, "
        "TRL): each group's std; batch: the std of all rewards of the batch (Dr. GRPO's and TRL's 'batch'); none: "
        "nothing (paper A's text). Old configs' std_normalize: true/false read as group/none.",
    )
    eps: float = Field(
        1e-6,
        ge=0,
        description="Added to the std before dividing (default 1e-6 as in paper A's code; DASH 1e-4).",
    )
    unbiased_std: bool = Field(
        False,
        description="Bessel-corrected std (divide by G-1). Default False (population std); DASH uses True with eps 1e-4.",
    )

    @model_validator(mode="before")
    @classmethod
    def _std_normalize_is_scale(cls, data: object) -> object:
        """Stored runs and old configs say std_normalize: true -> scale group, false -> scale none."""
        if isinstance(data, dict) and "std_normalize" in data:
            data = dict(data)
            old = "group" if data.pop("std_normalize") else "none"
            if data.setdefault("scale", old) != old:
                raise ValueError(f"std_normalize contradicts scale={data['scale']!r}: give scale only")
        return data


class PolicyLossConfig(_Strict):
    """PPO-clip surrogate (a vanilla policy gradient when ratio == 1) plus an optional KL penalty."""

    aggregation: Literal["seq_mean_token_mean", "token_sum_norm", "token_mean"] = Field(
        "seq_mean_token_mean",
        description=(
            "How token terms become the loss. seq_mean_token_mean (default; GRPO paper and paper A's length-normalised "
            "code): mean over each row's tokens, summed over rows, / rows. token_sum_norm (DASH / TRL dr_grpo): sum of "
            "token terms / (rows x max_completion_len). token_mean: sum of token terms / valid tokens."
        ),
    )
    clip_eps_low: float = Field(
        0.2, ge=0, lt=1, description="Ratio clipped below at 1 - eps_low (PPO default 0.2)."
    )
    clip_eps_high: float = Field(
        0.2, ge=0, description="Ratio clipped above at 1 + eps_high (0.2; larger = 'clip-higher')."
    )
    kl_beta: float = Field(
        0.0,
        ge=0,
        description="Weight of the per-token KL to the reference (default 0 = no KL, DASH; paper A GRPO 0.001).",
    )
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3",
        description="Schulman's per-token KL estimator (default k3: unbiased, always >= 0; used by GRPO and DASH).",
    )
    kl_bias_correction: bool = Field(
        False,
        description="Multiply the per-token KL by the importance ratio pi/pi_old (DeepSeek-V3.2's unbiased KL, "
        "TRL's use_bias_correction_kl): the KL estimate is then unbiased for pi when samples came from pi_old.",
    )
    clip_delta: float | None = Field(
        None,
        gt=1,
        description="Two-sided clipping (INTELLECT-2, TRL's delta): the unclipped term's ratio is capped at delta, "
        "so a negative advantage with a huge ratio cannot blow up the loss. None (default): one-sided PPO clip. "
        "TRL recommends a value > 1 + clip_eps_high.",
    )


    tis_cap: float | None = Field(
        None,
        gt=0,
        description="Truncated importance sampling (Yao et al. 2025, 'Your efficient RL framework secretly brings you "
        "off-policy RL training'): each token's policy-gradient term is weighted by min(exp(trainer_logp_old - "
        "engine_logp), tis_cap), and the PPO ratio's old log-prob becomes the trainer's own (computed before the "
        "update). Corrects for the generator's numerics differing from the trainer's. None (default): off; 2.0 "
        "is the paper's value.",
    )


class FilterConfig(_Strict):
    """DASH gradient filtering: back-propagate a row only if |A| > tau."""

    tau: float | None = Field(
        None, ge=0, description="Keep a row iff |A| > tau. None (default) = no filtering; DASH uses 0.1."
    )
    normalize_by: Literal["kept", "all"] = Field(
        "kept",
        description=(
            "Rows counted by the loss normalizer. 'kept' (default, DASH's code) divides by surviving rows, scaling the "
            "surviving gradient up by N/kept; 'all' divides by every row, so filtering rows with A = 0 leaves the "
            "gradient unchanged."
        ),
    )


class DPOConfig(_Strict):
    """DPO on summed sequence logprobs (paper A), optionally plus an NLL term on the chosen response."""

    beta: float = Field(
        0.1, gt=0, description="DPO temperature (default 0.1: paper A math; 0.01 for instruction following)."
    )
    nll_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the chosen response's per-token NLL (default 0; paper A tried 1.0, no gain).",
    )
    nll_normalization: Literal["token", "sequence"] = Field(
        "token",
        description="How the NLL term averages. token (default, as TRL's `sft` loss and `rpo_alpha`): the sum of "
        "-log pi over every chosen token of the optimizer batch / the number of those tokens, so long responses "
        "weigh more. sequence: each chosen response's per-token mean, then the mean over pairs.",
    )
