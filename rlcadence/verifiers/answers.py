"""Answer keys for majority voting (maj@k): the completion's final answer, normalised by Math-Verify.

Two completions vote together when their keys are equal. The final answer is the last ``\\boxed{}`` (or
"final answer is X"), parsed by ``math_verify.parse`` and written back as its SymPy form, so ``\\frac{1}{2}``,
``\\dfrac12`` and ``1/2`` share a key. A completion with no such answer is a plain answer (the arithmetic
task's ``357``): its key is the stripped text. Parsing runs in a :class:`DeadlinePool` (Math-Verify's own
timeout needs the main thread); an answer that cannot be parsed in time keeps its raw text as key.
"""

from __future__ import annotations

import threading

from rlcadence.verifiers.math import DeadlinePool, _as_math, extract_final_answer

_POOL: DeadlinePool | None = None
_LOCK = threading.Lock()


def normalized_answer(answer: str) -> str:
    """Worker side: Math-Verify's parse of ``answer`` as a string (the raw answer when nothing parses)."""
    from math_verify import parse

    parsed = parse(_as_math(answer), parsing_timeout=None)
    return str(parsed[0]) if parsed else answer


def _pool() -> DeadlinePool:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = DeadlinePool(1, 5.0, init="rlcadence.verifiers.math:warm_up_math_verify")
        return _POOL


def answer_keys(completions: list[str]) -> list[str | None]:
    """One vote key per completion; None for an empty completion (it does not vote)."""
    keys: list[str | None] = []
    todo: list[tuple[int, str]] = []
    for i, text in enumerate(completions):
        answer = extract_final_answer(text or "")
        if answer:
            todo.append((i, answer))
            keys.append(answer)
        else:
            keys.append((text or "").strip() or None)
    unique = list(dict.fromkeys(a for _, a in todo))  # a prompt's samples often repeat an answer: parse it once
    if unique:
        results = _pool().run(f"{__name__}:normalized_answer", [(a,) for a in unique])
        parsed = {a: value if status == "ok" else a for a, (status, value) in zip(unique, results, strict=True)}
        for i, answer in todo:
            keys[i] = parsed[answer]
    return keys
