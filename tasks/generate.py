"""Stage 1, generate: G completions for each of the step's M prompts, staged as Parquet."""

from __future__ import annotations

import time

import pyarrow as pa

from rlcadence import faults
from rlcadence.engines.base import Completion
from rlcadence.environments.base import PromptRow
from rlcadence.environments.mix import split_prompts
from rlcadence.prompts import encode_prompts
from rlcadence.run_state import RunState
from rlcadence.seeding import derive_seed
from rlcadence.storage import tables
from rlcadence.tasks.stage import stage


def step_prompts(run: RunState, tokenizer, step: int) -> list[PromptRow]:
    """The step's prompts: each environment's share, from its own stream at cursor step x share (resumable)."""
    envs = run.environments(tokenizer)
    counts = split_prompts(run.config.prompts_per_step, [e.spec.weight for e in envs])
    return [p for e, n in zip(envs, counts, strict=True) for p in e.prompts(step * n, n)]


def completions_table(run_id: str, step: int, version: int, prompts: list[PromptRow], prompt_ids: list[list[int]],
                      groups: list[list[Completion]], generate_seconds: float) -> pa.Table:
    """One row per sample, with the prompt's token ids as the engine saw them (the trainer reads those, never
    re-tokenising); reward/advantage/kept are filled by scoring."""
    rows = []
    now = tables.utcnow()
    per_sample = generate_seconds / max(1, sum(len(g) for g in groups))
    for p, ids, group in zip(prompts, prompt_ids, groups, strict=True):
        for j, c in enumerate(group):
            n = len(c.token_ids)
            rows.append({
                "run_id": run_id, "step": step, "policy_version": version, "environment": p.environment,
                "prompt_id": p.prompt_id, "sample_index": j, "prompt": p.prompt,
                "prompt_token_ids": ids, "gold": p.gold,
                "completion": c.text, "completion_tokens": n, "token_ids": c.token_ids,
                "token_logprobs": c.logprobs, "logprob_sum": float(sum(c.logprobs)),
                "logprob_mean": float(sum(c.logprobs) / n) if n else 0.0, "finish_reason": c.finish_reason,
                "reward": None, "verifier_detail": None, "advantage": None, "kept": None,
                "generate_seconds": per_sample, "score_seconds": None, "created_at": now,
            })
    return pa.Table.from_pylist(rows, schema=tables.ROLLOUT_SCHEMA)


@stage("generate")
def generate(run: RunState, step: int) -> str:
    """Sample G completions for each of the step's M prompts with the generator's current weights."""
    cfg = run.config
    policy = run.policy_at(step)
    version = policy.state.generator_version
    engine = run.generator_at(version)
    prompts = step_prompts(run, policy.tokenizer, step)
    prompt_ids = encode_prompts(policy.tokenizer, [p.prompt for p in prompts], [p.chat for p in prompts])
    t0 = time.perf_counter()
    chunk = cfg.generation_batch_prompts or len(prompts)
    groups = []
    for i in range(0, len(prompts), chunk):  # one call = pre-sampling; several = per-micro-batch sampling
        call = cfg.sampling.model_copy(update={"seed": derive_seed(cfg.seed, step, "generate", i)})
        groups += engine.generate(prompt_ids[i : i + chunk], cfg.group_size, call)
    run.release_generator()
    faults.maybe_crash("generate", step)
    table = completions_table(run.run_id, step, version, prompts, prompt_ids, groups, time.perf_counter() - t0)
    return run.loc.write_bytes(tables.table_to_parquet_bytes(table), "staging", run.run_id, f"step={step}",
                               "generated.parquet")
