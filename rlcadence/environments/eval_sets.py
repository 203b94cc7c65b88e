"""Eval sets, as configuration: held-out files an environment is evaluated on, each with its own sampling.

pydantic only (no torch), so a config with eval sets validates as fast as one without. The rows are read and
checked like training data (:func:`rlcadence.environments.datasets.load_prompts`), the prompt rendered the
same way (template, chat template), so a problem reads the same in training and in evaluation.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from rlcadence.engines.base import SamplingParams
from rlcadence.environments.datasets import LoadedPrompts, PromptSource, load_prompts
from rlcadence.strict import Strict

# Paper A (arXiv 2506.21495) evaluates Math500, NuminaMath and AMC23 at T=0.6, top-p 0.9.
SAMPLING_PRESETS: dict[str, dict[str, float]] = {
    "greedy": {"temperature": 0.0, "top_p": 1.0},
    "paper_a": {"temperature": 0.6, "top_p": 0.9},
}


class EvalSetSpec(Strict):
    """One eval set of an environment: a local file of prompts (and golds), scored by the environment's
    verifier, reward model or judge, with ``k`` samples per prompt."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="Unique in the run; metric prefix eval_<name>_*, "
                      "evals.eval_set.")
    source: PromptSource = Field(description="The file: .jsonl, .parquet or a save_to_disk directory, with its "
                                 "prompt and gold columns, validated like training data.")
    sampling: SamplingParams = Field(
        default_factory=lambda: SamplingParams(temperature=0.0),
        description="Greedy by default. A preset name ('greedy', 'paper_a' = T 0.6 / top-p 0.9) or "
        "{preset: paper_a, max_new_tokens: 1024}; the seed is derived from (run seed, step, eval set).")
    k: int = Field(1, ge=1, description="Samples per prompt (n of the pass@k estimator).")
    pass_at: list[int] | None = Field(
        None, description="The k values of pass@k, each at most `k` (None: 1 and k). Verifiable sets only.")
    max_prompts: int | None = Field(None, ge=1, description="Evaluate the first N rows only (None: all).")
    batch_prompts: int = Field(64, ge=1, description="Prompts per engine call (each with its k samples).")

    @field_validator("sampling", mode="before")
    @classmethod
    def _preset(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = {"preset": v}
        if isinstance(v, dict) and "preset" in v:
            rest = {key: val for key, val in v.items() if key != "preset"}
            if v["preset"] not in SAMPLING_PRESETS:
                raise ValueError(f"unknown sampling preset {v['preset']!r}: use one of {', '.join(SAMPLING_PRESETS)}")
            v = SAMPLING_PRESETS[v["preset"]] | rest
        return v

    @model_validator(mode="after")
    def _pass_at_within_k(self) -> EvalSetSpec:
        too_many = [j for j in self.pass_at or [] if j > self.k]
        if too_many:
            raise ValueError(f"eval set {self.name}: pass_at {too_many} exceeds k={self.k} samples per prompt "
                             "(pass@j needs j <= k samples)")
        if any(j < 1 for j in self.pass_at or []):
            raise ValueError(f"eval set {self.name}: pass_at values must be >= 1 (got {self.pass_at})")
        return self

    @property
    def pass_ks(self) -> list[int]:
        return sorted(set(self.pass_at if self.pass_at is not None else [1, self.k]))


def eval_prompt_limit(eval_set: EvalSetSpec, positions: int | None) -> int | None:
    """The longest prompt of the set: its source's max_prompt_tokens, else the model's context minus the
    set's own completion budget (not the training one)."""
    if eval_set.source.max_prompt_tokens is not None or positions is None:
        return eval_set.source.max_prompt_tokens
    return positions - eval_set.sampling.max_new_tokens


def load_eval_set(source: PromptSource, eval_set: EvalSetSpec, tokenizer: Any = None,
                  positions: int | None = None) -> LoadedPrompts:
    """The set's rows, checked like training data (missing gold column, bad or over-long rows: per
    ``on_bad_row``), in file order, cut to ``max_prompts``."""
    loaded = load_prompts(source, tokenizer, eval_prompt_limit(eval_set, positions))
    if eval_set.max_prompts is not None:
        loaded.rows = loaded.rows[: eval_set.max_prompts]
    return loaded
