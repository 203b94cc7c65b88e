"""Rollout rows: from engine completions to the ``rollouts`` table schema and back to a training batch."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch

from rlcadence.storage.tables import ROLLOUT_SCHEMA, utcnow
from rlcadence.tasks.engine.base import Completion
from rlcadence.tasks.verifiers.base import VerifierResult


@dataclass(frozen=True)
class PromptRow:
    prompt_id: str
    task: str
    prompt: str
    gold: str | None


def completions_table(run_id: str, step: int, version: int, prompts: list[PromptRow],
                      groups: list[list[Completion]], generate_seconds: float) -> pa.Table:
    """One row per sample; reward/advantage/kept are filled by scoring."""
    rows = []
    now = utcnow()
    per_sample = generate_seconds / max(1, sum(len(g) for g in groups))
    for p, group in zip(prompts, groups, strict=True):
        for j, c in enumerate(group):
            n = len(c.token_ids)
            rows.append({
                "run_id": run_id, "step": step, "policy_version": version, "task": p.task,
                "prompt_id": p.prompt_id, "sample_index": j, "prompt": p.prompt, "gold": p.gold,
                "completion": c.text, "completion_tokens": n, "token_ids": c.token_ids,
                "token_logprobs": c.logprobs, "logprob_sum": float(sum(c.logprobs)),
                "logprob_mean": float(sum(c.logprobs) / n) if n else 0.0, "finish_reason": c.finish_reason,
                "reward": None, "verifier_detail": None, "advantage": None, "kept": None,
                "generate_seconds": per_sample, "score_seconds": None, "created_at": now,
            })
    return pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA)


def with_scores(table: pa.Table, results: list[VerifierResult], advantages: torch.Tensor,
                kept: torch.Tensor, score_seconds: float) -> pa.Table:
    n = table.num_rows
    cols = {
        "reward": pa.array([r.reward for r in results], pa.float64()),
        "verifier_detail": pa.array([r.detail for r in results], pa.string()),
        "advantage": pa.array(advantages.double().tolist(), pa.float64()),
        "kept": pa.array(kept.bool().tolist(), pa.bool_()),
        "score_seconds": pa.array([score_seconds / max(1, n)] * n, pa.float64()),
    }
    for name, col in cols.items():
        table = table.set_column(table.schema.get_field_index(name), name, col)
    return table
