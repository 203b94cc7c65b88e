"""What an environment of the mix is, as configuration: pydantic only (no torch), so a config validates fast."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlcadence.devices import DEVICE_PATTERN
from rlcadence.environments.datasets import PromptSource
from rlcadence.environments.eval_sets import EvalSetSpec
from rlcadence.strict import Strict

DEFAULT_JUDGE_TEMPLATE = (
    "Rate the response to the instruction on a scale of 0 to 10. Reply with the number only.\n"
    "Instruction: {prompt}\nResponse: {completion}\nScore:"
)


class JudgeSpec(Strict):
    """An LLM as judge: a causal LM (local dir or cached hub id) asked to grade each completion greedily."""

    model: str = Field(description="Judge model dir or hub id (loaded with AutoModelForCausalLM).")
    template: str = Field(DEFAULT_JUDGE_TEMPLATE, description="str.format template with {prompt} and {completion}.")
    parse_regex: str = Field(r"(\d+(?:\.\d+)?)", description="First match (group 1 if any) is the score.")
    max_score: float = Field(10.0, gt=0, description="reward = score / max_score; scores outside [0, max] give 0.")
    max_new_tokens: int = Field(16, ge=1)


class RewardTerm(Strict):
    """One reward function of an environment with several (TRL's reward_funcs / reward_weights)."""

    verifier: str = Field(description="Registry name ('math', 'exact_match', 'numeric') or dotted path.")
    weight: float = Field(1.0, description="Weight of this term in the combination (may be negative).")


class EnvironmentSpec(Strict):
    """One environment of the mix. ``kind`` picks the prompt source; rewards come from ``verifier`` (verifiable)
    or ``reward_model`` (non-verifiable), with built-in defaults for the embedded environments."""

    name: str = Field("arithmetic", pattern=r"^[A-Za-z0-9_]+$", description="Stored in rollouts.environment; metric suffix.")
    kind: Literal["arithmetic", "toy_pref", "dataset"] = "arithmetic"
    source: PromptSource | None = Field(None, description="Prompts file (kind=dataset).")
    verifier: str | None = Field(None, description="Registry name ('math', 'exact_match', 'numeric') or dotted path.")
    rewards: list[RewardTerm] | None = Field(
        None, min_length=1, description="Several verifiers with weights, instead of `verifier` (kind=dataset).")
    reward_combination: Literal["sum", "normalized_sum"] = Field(
        "sum", description="How `rewards` combine: sum of w_k * r_k, or normalized_sum: each term z-scored over the "
        "step's rows of this environment, then the weighted sum. A term's None (NaN) is left out of both.")
    reward_model: str | None = Field(None, description="AutoModelForSequenceClassification dir (non-verifiable).")
    judge: JudgeSpec | None = Field(None, description="LLM-as-judge scorer (non-verifiable); unparseable replies "
                                    "score 0 and are recorded in the rollout's verifier detail.")
    weight: float = Field(1.0, gt=0, description="Share of each step's prompts (relative to the other environments).")
    reward_normalization: Literal["none", "zscore", "minmax"] = "none"
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="Reward model / judge device; None: the run's.")
    eval_sets: list[EvalSetSpec] = Field(
        default_factory=list, description="Held-out files evaluated every eval_every steps (and by `rlcadence eval`) "
        "with this environment's reward: pass@k, maj@k, mean@k into metrics, every sample into the evals table.")

    @model_validator(mode="after")
    def _complete(self) -> EnvironmentSpec:
        if self.kind == "dataset":
            if self.source is None and not self.eval_sets:
                raise ValueError(f"environment {self.name}: kind=dataset needs a source")
            given = [k for k in ("verifier", "rewards", "reward_model", "judge") if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError(f"environment {self.name}: give exactly one of verifier / rewards / reward_model / judge "
                                 f"(got {', '.join(given) or 'none'})")
            if self.verifier is None and self.rewards is None and self.source is not None:
                self.source = _without_default_gold(self.source)
        if not self.verifiable:
            self.eval_sets = [s.model_copy(update={"source": _without_default_gold(s.source)}) for s in self.eval_sets]
        return self

    def eval_source(self, eval_set: EvalSetSpec) -> PromptSource:
        """The eval set's file as this environment reads it (its name picks the default template)."""
        return eval_set.source.model_copy(update={"environment": self.name})

    @property
    def verifiable(self) -> bool:
        return self.kind == "arithmetic" or (self.kind == "dataset" and (self.verifier or self.rewards) is not None)


def _without_default_gold(source: PromptSource) -> PromptSource:
    """Scored environments need no reference answer: don't require the default 'gold' column."""
    if "gold_column" in source.model_fields_set:
        return source
    return source.model_copy(update={"gold_column": None})
