"""Stage 1, generate: G completions for each of the step's M prompts, staged as Parquet."""

from __future__ import annotations

import time
from dataclasses import dataclass

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


@dataclass
class SentGeneration:
    """A step's generation, sent to the engine (``runner: ray``: possibly still sampling in the actor)."""

    step: int
    version: int  # the generator version it was sent after
    prompts: list[PromptRow]
    prompt_ids: list[list[int]]
    calls: list  # per chunk: an engine reference (RayEngine.submit) or the groups themselves
    engine: object
    inline_s: float = 0.0  # seconds sampling inline (an engine without submit)


def generation_step(run: RunState, step: int) -> int:
    """The policy step whose generator version samples step ``step``: ``step - max_staleness`` (at least 0).

    The synchronous schedule delayed by k steps, so a run resumed after a crash samples every step with the
    same version as an uninterrupted one, and ``step - policy_version`` never exceeds k + sync_every - 1."""
    return max(0, step - run.config.max_staleness)


def send_generation(run: RunState, step: int) -> SentGeneration:
    """Sync the generator to step ``step``'s version and send its sampling calls (each chunk its own seed).

    With an engine that can be called asynchronously (the Ray actor) this returns before sampling ends."""
    cfg = run.config
    policy = run.policy_at(generation_step(run, step))
    version = policy.state.generator_version
    engine = run.generator_at(version)
    prompts = step_prompts(run, policy.tokenizer, step)
    prompt_ids = encode_prompts(policy.tokenizer, [p.prompt for p in prompts], [p.chat for p in prompts])
    chunk = cfg.generation_batch_prompts or len(prompts)
    submit = getattr(engine, "submit", None)
    calls, t0 = [], time.perf_counter()
    for i in range(0, len(prompts), chunk):  # one call = pre-sampling; several = per-micro-batch sampling
        call = cfg.sampling.model_copy(update={"seed": derive_seed(cfg.seed, step, "generate", i)})
        ids = prompt_ids[i : i + chunk]
        calls.append(submit(ids, cfg.group_size, call) if submit else engine.generate(ids, cfg.group_size, call))
    return SentGeneration(step, version, prompts, prompt_ids, calls, engine, 0.0 if submit else time.perf_counter() - t0)


def receive_generation(run: RunState, sent: SentGeneration) -> str:
    """Wait for the sampled groups and stage them as the step's Parquet file."""
    groups, seconds = [], sent.inline_s  # the sampling seconds: inline, or the actor's own
    for call in sent.calls:
        if isinstance(call, list):
            groups += call
            continue
        version, chunk_groups, chunk_s = sent.engine.result(call)
        if version != sent.version:
            raise RuntimeError(f"step {sent.step}: the generator sampled with version {version}, expected {sent.version}")
        groups += chunk_groups
        seconds += chunk_s
    table = completions_table(run.run_id, sent.step, sent.version, sent.prompts, sent.prompt_ids, groups, seconds)
    return run.loc.write_bytes(tables.table_to_parquet_bytes(table), "staging", run.run_id, f"step={sent.step}",
                               "generated.parquet")


def drop_generations(run: RunState) -> None:
    """After a failed generation: forget every generation sent ahead and, on Ray, the actor itself (it may be
    dead), so the stage's retry sends them again, to a fresh actor, with the same versions and seeds."""
    run.pending_generations.clear()
    close = getattr(run.engine, "close", None)
    if close is not None:
        close()
        run.engine = None


@stage("generate")
def generate(run: RunState, step: int) -> str:
    """Sample G completions for each of the step's M prompts with the generator's current weights.

    ``max_staleness = k``: the generations of steps up to ``step + k`` are sent first (those not already in
    flight), so with the Ray actor they sample while this step scores and trains."""
    cfg = run.config
    pending = run.pending_generations
    for ahead in range(step, min(step + cfg.max_staleness, cfg.steps - 1) + 1):
        if ahead not in pending:
            pending[ahead] = send_generation(run, ahead)
    try:
        uri = receive_generation(run, pending.pop(step))
    except BaseException:
        drop_generations(run)
        raise
    if not cfg.max_staleness:
        run.release_generator()
    faults.maybe_crash("generate", step)
    return uri
