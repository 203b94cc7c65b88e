"""A built-in non-verifiable environment: "write a reply of a given length", scored by a deterministic scorer.

The scorer stands in for a reward model (paper A's instruction-following runs use Athene-RM-8B): it
sees (prompt, completion), returns a GRADED score in [0, 1] rather than right/wrong, and needs no
download, so the non-verifiable and multi-environment paths (highest- vs lowest-scored DPO pairs, GRPO on
real-valued rewards) run on a CPU in tests and miniature experiments.

Prompt ``"len:5>"`` asks for a reply of 5 characters; score = max(0, 1 - |len(reply.strip()) - 5| / 5),
so 5 characters score 1.0, 4 or 6 score 0.8, an empty reply 0.0. The prompt is printable ASCII, so a
character-level model that knows digits learns it by learning where to put EOS.
"""

from __future__ import annotations

import random
import re

from rlcadence.environments.base import PromptRow
from rlcadence.verifiers.base import VerifierResult

ENVIRONMENT_NAME = "toy_pref"
_TARGET = re.compile(r"len:(\d+)>")


def length_score(completion: str, target: int) -> float:
    """1 - |len(completion.strip()) - target| / target, clipped to [0, 1]."""
    return max(0.0, 1.0 - abs(len(completion.strip()) - target) / target)


class ToyLengthScorer:
    """Implements the ``Scorer`` protocol: the target length is read from the prompt (``len:<k>>``)."""

    def __call__(self, prompts: list[str], completions: list[str]) -> list[VerifierResult]:
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            found = _TARGET.findall(prompt)  # the last one, in case a template repeats the pattern
            target = int(found[-1]) if found else 0
            if target < 1:
                out.append(VerifierResult(0.0, "unparseable prompt"))
                continue
            n = len(completion.strip())
            out.append(VerifierResult(length_score(completion, target), f"len {n} target {target}"))
        return out


class ToyPreferenceEnvironment:
    """Seeded prompts ``len:<k>>`` with k uniform in [min_target, max_target]; gold is str(k).

    ``train_prompts(n, start)`` is random-access (row i depends only on (seed, i)), so a resumed run
    draws the same prompts; held-out rows come from a separate stream of the same seed.
    Keep ``max_target`` below the sampler's ``max_new_tokens`` so every target is reachable.
    """

    def __init__(self, seed: int = 0, min_target: int = 1, max_target: int = 6):
        if not 1 <= min_target <= max_target:
            raise ValueError(f"need 1 <= min_target <= max_target, got {min_target}, {max_target}")
        self.seed, self.min_target, self.max_target = seed, min_target, max_target
        self.scorer = ToyLengthScorer()

    def _row(self, split: str, stream: int, i: int) -> PromptRow:
        k = random.Random(self.seed * 1_000_003 + stream * 7_919 + i).randint(
            self.min_target, self.max_target
        )
        return PromptRow(
            prompt_id=f"{ENVIRONMENT_NAME}-{split}-{i}", environment=ENVIRONMENT_NAME, prompt=f"len:{k}>", gold=str(k)
        )

    def train_prompts(self, n: int, start: int = 0) -> list[PromptRow]:
        return [self._row("train", 1, i) for i in range(start, start + n)]

    def heldout_prompts(self, n: int) -> list[PromptRow]:
        return [self._row("heldout", 2, i) for i in range(n)]
