"""Held-out evaluation: greedy accuracy of a model on problems it never trained on."""

from __future__ import annotations

import time

from rlcadence.engines.base import Engine, SamplingParams
from rlcadence.verifiers.base import Verifier


def heldout_accuracy(engine: Engine, prompt_ids: list[list[int]], golds: list[str], verifier: Verifier,
                     sampling: SamplingParams, batch_size: int = 512) -> dict[str, float]:
    """Mean reward of one greedy sample per prompt (exact match for verifiable tasks); prompts as token ids
    (:func:`rlcadence.prompts.encode_prompts`)."""
    t0 = time.perf_counter()
    rewards: list[float] = []
    lengths: list[int] = []
    for i in range(0, len(prompt_ids), batch_size):
        groups = engine.generate(prompt_ids[i : i + batch_size], 1, sampling)
        texts = [g[0].text for g in groups]
        lengths += [len(g[0].token_ids) for g in groups]
        rewards += [r.reward for r in verifier(texts, golds[i : i + batch_size])]
    return {
        "eval/accuracy": sum(rewards) / max(1, len(rewards)),
        "eval/mean_length": sum(lengths) / max(1, len(lengths)),
        "eval/n": float(len(rewards)),
        "time/eval_s": time.perf_counter() - t0,
    }
