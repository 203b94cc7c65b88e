"""The verifier boundary: completions and gold answers in, rewards and a detail string out.

Verifiers never touch a model; reward models and judges are separate scorers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class VerifierResult:
    reward: float
    detail: str  # e.g. "correct", "wrong: got 12", "no_answer", "timeout"


class Verifier(Protocol):
    def __call__(self, completions: list[str], golds: list[str]) -> list[VerifierResult]: ...
