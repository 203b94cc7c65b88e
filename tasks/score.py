"""Stage 2, score: rewards from each environment's verifier or scorer, group advantages, the gradient
filter, and the step's rows committed to the ``rollouts`` table."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rlcadence.environments.mix import Environment
from rlcadence.objectives import gradient_filter_mask, group_advantages, zero_advantage_group_fraction
from rlcadence.run_state import RunState
from rlcadence.storage import tables
from rlcadence.tasks.stage import stage
from rlcadence.verifiers.base import VerifierResult


def score_by_environment(envs: list[Environment], env_col: list[str], prompts: list[str], completions: list[str],
                         golds: list[str | None]) -> list[VerifierResult]:
    """Each row scored by its own environment's verifier or scorer, in one call per environment."""
    results: list[VerifierResult | None] = [None] * len(env_col)
    for env in envs:
        idx = [i for i, name in enumerate(env_col) if name == env.spec.name]
        if idx:
            scored = env.score([prompts[i] for i in idx], [completions[i] for i in idx], [golds[i] for i in idx])
            for i, r in zip(idx, scored, strict=True):
                results[i] = r
    missing = [env_col[i] for i, r in enumerate(results) if r is None]
    if missing:
        raise ValueError(f"rollouts of unknown environment(s) {sorted(set(missing))}")
    return results  # type: ignore[return-value]


def per_environment_reward_metrics(envs: list[Environment], env_col: list[str], rewards: torch.Tensor) -> dict[str, float]:
    out = {}
    for env in envs:
        mask = torch.tensor([name == env.spec.name for name in env_col])
        if bool(mask.any()):
            out[f"reward/mean_{env.spec.name}"] = float(rewards[mask].mean())
            if env.spec.verifiable:
                out[f"reward/accuracy_{env.spec.name}"] = float((rewards[mask] >= 1.0).double().mean())
    return out


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


def _relative(loc, uri: str) -> str:
    path = uri.removeprefix("s3://")
    return path[len(loc.root) + 1 :] if path.startswith(loc.root) else path


@stage("score")
def score(run: RunState, step: int, generated: str) -> dict[str, float]:
    """Verify, compute group advantages and the gradient filter, and commit the step's rollout rows."""
    cfg, loc = run.config, run.loc
    table = pq.read_table(io.BytesIO(loc.read_bytes(_relative(loc, generated))))
    t0 = time.perf_counter()
    env_col = table.column("environment").to_pylist()
    envs = run.environments()
    columns = (env_col, table.column("prompt").to_pylist(), table.column("completion").to_pylist(),
               table.column("gold").to_pylist())
    if cfg.runner == "ray":  # the same verifiers, fanned out over the cluster's CPUs
        from rlcadence.ray_scoring import score_on_ray

        results = score_on_ray(cfg, *columns)
    else:
        results = score_by_environment(envs, *columns)
    rewards = torch.tensor([r.reward for r in results], dtype=torch.float64)  # [M*G]
    advantages = group_advantages(rewards, cfg.group_size, cfg.advantage)  # [M*G]
    kept = gradient_filter_mask(advantages, cfg.filter.tau)  # [M*G]
    table = with_scores(table, results, advantages, kept, time.perf_counter() - t0)
    tables.write_step_table(loc, "rollouts", run.run_id, step, table)
    lengths = torch.tensor(table.column("completion_tokens").to_pylist(), dtype=torch.float64)
    per_env = per_environment_reward_metrics(envs, env_col, rewards) if len(cfg.environments) > 1 else {}
    return per_env | {
        "reward/mean": float(rewards.nanmean()),  # NaN = no reward (None), left out as in the advantages
        "reward/accuracy": float((rewards >= 1.0).double().mean()),
        "reward/missing_fraction": float(rewards.isnan().double().mean()),
        "rollout/mean_length": float(lengths.mean()),
        "rollout/zero_advantage_group_fraction": zero_advantage_group_fraction(rewards, cfg.group_size),
        "rollout/kept_fraction": float(kept.double().mean()),
        "rollout/generator_lag": float(step - table.column("policy_version")[0].as_py()),
        "time/generate_s": float(sum(table.column("generate_seconds").to_pylist())),
        "time/score_s": time.perf_counter() - t0,
    }
