"""Evaluation: greedy held-out accuracy (the run's headline figure), and eval sets with k samples per
prompt (pass@k, maj@k, mean@k; every sample a row of the ``evals`` table)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from rlcadence.engines.base import Engine, SamplingParams
from rlcadence.environments.eval_sets import EvalSetSpec
from rlcadence.environments.mix import Environment
from rlcadence.eval_metrics import summarize
from rlcadence.prompts import encode_prompts
from rlcadence.seeding import derive_seed
from rlcadence.verifiers.answers import answer_keys
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


# ------------------------------------------------------------------------------------------- eval sets


def eval_seed(run_seed: int, step: int, eval_set: str, batch_start: int) -> int:
    """The sampling seed of one engine call of an eval set. The run's evaluate stage and `rlcadence eval`
    both take it from here, so a checkpoint evaluated later samples exactly what the run sampled."""
    return derive_seed(run_seed, step, "eval", eval_set, batch_start)


@dataclass
class EvalSetsResult:
    rows: list[dict] = field(default_factory=list)  # evals table rows (storage.tables.EVALS_SCHEMA)
    metrics: dict[str, float] = field(default_factory=dict)  # eval/<set>/<metric>


def evaluate_sets(engine: Engine, environments: list[Environment], tokenizer, *, run_seed: int, step: int,
                  model: str, run_id: str) -> EvalSetsResult:
    """Every eval set of every environment: k samples per prompt, raw rewards, the per-set summary.

    ``model`` names the weights in the rows (``run:<id>@<step>`` or a model directory)."""
    t0 = time.perf_counter()
    out = EvalSetsResult()
    for env in environments:
        for spec in env.spec.eval_sets:
            rows, metrics = _evaluate_set(engine, env, spec, tokenizer, run_seed, step)
            now = datetime.now(timezone.utc)
            out.rows += [{"run_id": run_id, "step": step, "model": model, "created_at": now, **r} for r in rows]
            out.metrics |= {f"eval/{spec.name}/{name}": value for name, value in metrics.items()}
    if out.rows:
        out.metrics["time/eval_sets_s"] = time.perf_counter() - t0
    return out


def _evaluate_set(engine: Engine, env: Environment, spec: EvalSetSpec, tokenizer, run_seed: int,
                  step: int) -> tuple[list[dict], dict[str, float]]:
    prompts = env.eval_rows[spec.name]
    ids = encode_prompts(tokenizer, [p.prompt for p in prompts], [p.chat for p in prompts])
    groups, seeds = [], []
    for i in range(0, len(prompts), spec.batch_prompts):
        seed = eval_seed(run_seed, step, spec.name, i)
        groups += engine.generate(ids[i : i + spec.batch_prompts], spec.k, spec.sampling.model_copy(update={"seed": seed}))
        seeds += [seed] * len(ids[i : i + spec.batch_prompts])
    samples = [(p, j, c) for p, g in zip(prompts, groups, strict=True) for j, c in enumerate(g)]
    scored = env.score([p.prompt for p, _, _ in samples], [c.text for _, _, c in samples],
                       [p.gold for p, _, _ in samples], normalize=False)
    verifiable = env.spec.verifiable
    keys = answer_keys([c.text for _, _, c in samples]) if verifiable else [None] * len(samples)
    rows = []
    for (p, j, c), r, key, seed in zip(samples, scored, keys, [s for s in seeds for _ in range(spec.k)], strict=True):
        rows.append({
            "eval_set": spec.name, "environment": env.spec.name, "prompt_id": p.prompt_id, "sample_index": j,
            "prompt": p.prompt, "gold": p.gold, "completion": c.text, "completion_tokens": len(c.token_ids),
            "finish_reason": c.finish_reason, "truncated": c.finish_reason == "length", "reward": r.reward,
            "correct": (r.reward >= 1.0) if verifiable else None, "verifier_detail": r.detail, "answer_key": key,
            "seed": seed, "temperature": spec.sampling.temperature, "top_p": spec.sampling.top_p,
        })
    k = spec.k
    per_prompt = lambda name: [[row[name] for row in rows[i : i + k]] for i in range(0, len(rows), k)]  # noqa: E731
    metrics = summarize(per_prompt("reward"), per_prompt("answer_key") if verifiable else None,
                        per_prompt("completion_tokens"), per_prompt("truncated"), spec.pass_ks)
    return rows, metrics
