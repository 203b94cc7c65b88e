"""The generation engine interface: the only thing the RL loop knows about the sampler.

A transformers implementation runs anywhere (CPU included); a vLLM one plugs in behind the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import Field

from rlcadence.strict import Strict


class SamplingParams(Strict):
    """How completions are sampled. Training defaults follow the papers (T=1.0, top-p 1.0)."""

    temperature: float = Field(1.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(8, ge=1, description="Completion length cap in tokens.")
    seed: int = Field(0, description="Seed of this call's sampling; the flow derives it from (run seed, step).")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings (besides the tokenizer's EOS); "
                            "the completion ends after the token that completes one.")


SEED_SPAN = 2**62  # per-request seeds stay inside int64 after vLLM adds the sample index


def request_seed(seed: int, prompt_index: int, n: int) -> int:
    """vLLM engines: the seed of prompt ``prompt_index``'s request (vLLM gives its sample j seed + j, so no
    two samples of one call share a seed); the in-process and server engines use the same rule."""
    return (seed + prompt_index * n) % SEED_SPAN


@dataclass
class Completion:
    """One sampled completion with what training needs from the generator."""

    text: str
    token_ids: list[int]  # completion tokens, EOS included when it was produced
    logprobs: list[float]  # generator's log p(token) at T=1 for each token of token_ids
    finish_reason: str  # "stop" (an EOS id or a stop string) or "length"


class Engine(Protocol):
    """``generate`` takes prompts as token ids (encoded once, by :mod:`rlcadence.prompts`, so no engine
    re-tokenises) and returns, for each prompt, ``n`` completions in order."""

    tokenizer: object  # decodes completions and encodes the prompts given to generate

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]: ...

    def load_weights(self, model_dir: Path, version: int) -> None:
        """Replace the generator's weights with those saved in ``model_dir`` (policy version ``version``)."""
        ...

    @property
    def policy_version(self) -> int: ...
