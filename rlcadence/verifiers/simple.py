"""Verifiers that need no parser: exact string match and numeric comparison.

Both look at the completion's final answer first (the last ``\\boxed{}``, else "final answer is X",
see :func:`~rlcadence.verifiers.math.extract_final_answer`) and fall back to the whole
completion. Details are exactly ``"correct"``, ``"wrong"``, ``"no_answer"`` and (numeric, for a gold
without a number) ``"parse_error"``.
"""

from __future__ import annotations

import math
import re

from rlcadence.verifiers.base import VerifierResult
from rlcadence.verifiers.math import extract_final_answer

# A number: optional sign; digits with thousands commas, plain digits, or a leading-dot decimal;
# optional exponent; optional percent sign (also LaTeX "\%"). Not preceded by a letter, digit or dot,
# so "x2" and the "5" of "1.5" are not numbers of their own.
_NUMBER = re.compile(
    r"(?<![\w.])([-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)(?:\s*\\?%)?"
)


def _answer_text(completion: str) -> str:
    answer = extract_final_answer(completion)
    return answer if answer is not None else completion


class ExactMatchVerifier:
    """Reward 1 iff the final answer (else the whole completion) equals gold as a string.

    ``strip`` removes surrounding whitespace from both; ``case_sensitive=False`` compares casefolded.
    """

    def __init__(self, strip: bool = True, case_sensitive: bool = False):
        self.strip, self.case_sensitive = strip, case_sensitive

    def _norm(self, s: str) -> str:
        s = s.strip() if self.strip else s
        return s if self.case_sensitive else s.casefold()

    def __call__(self, completions: list[str], golds: list[str]) -> list[VerifierResult]:
        out = []
        for text, gold in zip(completions, golds, strict=True):
            answer = self._norm(_answer_text(text or ""))
            if not answer.strip():
                out.append(VerifierResult(0.0, "no_answer"))
            elif answer == self._norm(str(gold)):
                out.append(VerifierResult(1.0, "correct"))
            else:
                out.append(VerifierResult(0.0, "wrong"))
        return out


def last_number(text: str) -> float | None:
    """The last number in ``text``: ``"1,234.5"`` -> 1234.5, ``"50%"`` -> 50.0 (the percent sign is dropped)."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return float(matches[-1].replace(",", ""))


class NumericVerifier:
    """Reward 1 iff the last number of the final answer (else of the completion) is close to gold's.

    Closeness is ``math.isclose(pred, gold, rel_tol, abs_tol)``. Percent signs are dropped on both
    sides (gold "50%" matches "50", not "0.5"); fractions and LaTeX need the ``math`` verifier.
    """

    def __init__(self, rel_tol: float = 1e-6, abs_tol: float = 1e-9):
        self.rel_tol, self.abs_tol = rel_tol, abs_tol

    def __call__(self, completions: list[str], golds: list[str]) -> list[VerifierResult]:
        out = []
        for text, gold in zip(completions, golds, strict=True):
            target = last_number(str(gold))
            pred = last_number(_answer_text(text or ""))
            if target is None:
                out.append(VerifierResult(0.0, "parse_error"))
            elif pred is None:
                out.append(VerifierResult(0.0, "no_answer"))
            elif math.isclose(pred, target, rel_tol=self.rel_tol, abs_tol=self.abs_tol):
                out.append(VerifierResult(1.0, "correct"))
            else:
                out.append(VerifierResult(0.0, "wrong"))
        return out
