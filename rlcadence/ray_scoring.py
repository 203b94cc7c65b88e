"""``runner: ray``: verifier scoring fanned out as Ray tasks, one per chunk of ``ray_score_chunk_rows`` rows.

Why plain Ray tasks and not prefect-ray's ``RayTaskRunner.submit`` of a scoring task: the score stage is
already the unit Prefect retries, caches and records (a task, or a recorded stage inside a segment task),
and it commits the step's rows. A chunk is a pure function of its rows, so it needs none of that; made a
Prefect task it would cost a task run (~60 ms of API calls here) per chunk and need the flow's task runner
to be Ray, which would ship every stage, model handles included, to Ray workers. Kept inside the stage, a
failed chunk fails the stage, and the stage's own retries and records behave exactly as with the local runner.

Each worker opens the environments once (verifiers, scorer pools) and keeps them for later chunks.
"""

from __future__ import annotations

import json

from rlcadence.config import RLConfig
from rlcadence.environments.mix import Environment, open_environments
from rlcadence.verifiers.base import VerifierResult

_OPENED: dict[str, list[Environment]] = {}  # per worker process: environments by their config
_REMOTE = None


def _worker_environments(key: str) -> list[Environment]:
    if key not in _OPENED:
        spec = json.loads(key)
        cfg = RLConfig.model_validate(spec["config"])
        arith = cfg.bootstrap.environment
        envs = [e.model_copy(update={"eval_sets": []}) for e in cfg.environments]  # scoring needs no eval rows
        _OPENED[key] = open_environments(envs, cfg.seed, arith.split_seed, arith.digits, arith.n_heldout,
                                         training_rows=False)
    return _OPENED[key]


def _score_chunk(key: str, env_col: list[str], prompts: list[str], completions: list[str],
                 golds: list[str | None]) -> list[VerifierResult]:
    from rlcadence.tasks.score import score_by_environment

    return score_by_environment(_worker_environments(key), env_col, prompts, completions, golds)


def _remote():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(num_cpus=1, max_retries=0)(_score_chunk)
    return _REMOTE


def score_on_ray(cfg: RLConfig, env_col: list[str], prompts: list[str], completions: list[str],
                 golds: list[str | None]) -> list[VerifierResult]:
    """The rows' verifier results, in row order, from one Ray task per chunk."""
    import ray

    from rlcadence.ray_cluster import connect

    connect(cfg.ray_address)
    fields = {"environments", "seed", "bootstrap"}
    key = json.dumps({"config": cfg.model_dump(mode="json", include=fields)}, sort_keys=True)
    size = cfg.ray_score_chunk_rows
    refs = [_remote().remote(key, env_col[i : i + size], prompts[i : i + size], completions[i : i + size],
                             golds[i : i + size]) for i in range(0, len(env_col), size)]
    return [r for chunk in ray.get(refs) for r in chunk]
