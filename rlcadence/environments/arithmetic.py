"""The embedded verifiable environment: n-digit addition ("12+345=" -> "357"), seeded, with disjoint splits.

Small enough that a 0.3M-parameter model learns it on a CPU in a minute, hard enough (carries) that
SFT leaves room for RL to improve exact-match accuracy.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlcadence.verifiers.base import VerifierResult

ENVIRONMENT_NAME = "arithmetic"


@dataclass(frozen=True)
class Problem:
    prompt_id: str
    environment: str
    prompt: str
    gold: str


def _problem(a: int, b: int) -> Problem:
    return Problem(prompt_id=f"add-{a}-{b}", environment=ENVIRONMENT_NAME, prompt=f"{a}+{b}=", gold=str(a + b))


def make_splits(seed: int = 0, digits: int = 3, n_heldout: int = 500) -> tuple[list[Problem], list[Problem]]:
    """All (a, b) pairs with up to ``digits`` digits, shuffled by ``seed``; held-out pairs never train.

    Returns (train, heldout). With 3 digits there are 10^6 pairs, so train is effectively unlimited;
    pairs are drawn lazily to keep memory flat.
    """
    rng = random.Random(seed)
    limit = 10**digits
    heldout_keys: set[tuple[int, int]] = set()
    heldout: list[Problem] = []
    while len(heldout) < n_heldout:
        a, b = rng.randrange(limit), rng.randrange(limit)
        if (a, b) not in heldout_keys:
            heldout_keys.add((a, b))
            heldout.append(_problem(a, b))
    train = TrainStream(seed=seed + 1, digits=digits, exclude=frozenset(heldout_keys))
    return train, heldout  # type: ignore[return-value]


class TrainStream:
    """Deterministic, random-access stream of training problems: item ``i`` depends only on (seed, i).

    Random access is what makes resume exact: the data cursor is just an integer in the checkpoint.
    """

    def __init__(self, seed: int, digits: int, exclude: frozenset[tuple[int, int]]):
        self.seed, self.digits, self.exclude = seed, digits, exclude

    def __getitem__(self, i: int) -> Problem:
        rng = random.Random(self.seed * 1_000_003 + i)
        limit = 10**self.digits
        while True:
            a, b = rng.randrange(limit), rng.randrange(limit)
            if (a, b) not in self.exclude:
                return _problem(a, b)

    def batch(self, start: int, size: int) -> list[Problem]:
        return [self[i] for i in range(start, start + size)]


def verify_sum(completions: list[str], golds: list[str]) -> list[VerifierResult]:
    """Exact match of the completion (up to EOS, stripped) with the gold sum: reward 1 or 0."""
    out = []
    for text, gold in zip(completions, golds, strict=True):
        answer = text.strip()
        if not answer:
            out.append(VerifierResult(0.0, "no_answer"))
        elif answer == gold:
            out.append(VerifierResult(1.0, "correct"))
        else:
            out.append(VerifierResult(0.0, f"wrong: got {answer[:16]}"))
    return out


def export_prompts(problems: list[Problem], path: Path) -> Path:
    """Write problems as Parquet or JSONL (by suffix), the format user datasets use."""
    path = Path(path)
    rows = [asdict(p) for p in problems]
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        raise ValueError(f"unsupported export format {path.suffix!r} for {path}: use .parquet or .jsonl")
    return path
