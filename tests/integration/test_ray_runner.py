"""runner: ray on a real local Ray cluster (127.0.0.1) and a real Prefect server: the generation engine in
the run's Ray actor, scoring fanned out as Ray tasks, and the same experiment as the local runner."""

from __future__ import annotations

import pytest

from rlcadence.config import RLConfig
from rlcadence.flows.rl import rl
from tests.integration.helpers import small_config, sql

pytestmark = pytest.mark.slow

ROWS = "step, prompt_id, sample_index, completion, reward"


def _metric_columns(store: str) -> list[str]:
    return [c[0] for c in sql(store, "SELECT column_name FROM (DESCRIBE metrics)")]


def _comparable_metrics(store: str) -> list[tuple]:
    names = [c for c in _metric_columns(store) if not c.startswith(("time_", "weight_sync_"))
             and c not in ("created_at", "run_id", "memory_peak_rss_bytes")]
    return sql(store, f"SELECT {', '.join(names)} FROM metrics ORDER BY step")


def test_ray_runner_matches_local_run(prefect_server, ray_cluster, seed_model, tmp_path):
    local, on_ray = str(tmp_path / "local"), str(tmp_path / "ray")
    rl(RLConfig.model_validate(small_config(seed_model, local, run_id="runner-local")))
    rl(RLConfig.model_validate(small_config(seed_model, on_ray, run_id="runner-ray", runner="ray",
                                            ray_address=ray_cluster, ray_score_chunk_rows=10)))
    ours, theirs = (sql(s, f"SELECT {ROWS}, policy_version, logprob_sum FROM rollouts ORDER BY ALL") for s in (on_ray, local))
    assert len(ours) == 4 * 8 * 4
    # the actor samples with the flow's seeds, dtype and thread count: bitwise the same completions on the CPU
    assert ours == theirs
    assert _metric_columns(on_ray) == _metric_columns(local)
    assert _comparable_metrics(on_ray) == _comparable_metrics(local)
    assert sql(on_ray, "SELECT status FROM runs") == [("completed",)]


def test_generator_actor_syncs_versioned_weights(ray_cluster, seed_model):
    """The proxy engine against the actor directly: samples equal the in-process engine's for the same
    weights and seed, a sync through the object store changes them, and each batch names its version."""
    import os

    import ray
    import torch

    from rlcadence.engines.base import SamplingParams
    from rlcadence.engines.hf import TransformersEngine
    from rlcadence.engines.ray_actor import RayEngine
    from rlcadence.ray_cluster import connect, disconnect

    connect(ray_cluster)
    try:
        remote = RayEngine("actor-test", seed_model, torch.device("cpu"), torch.float32, gpus=1.0)
        local = TransformersEngine(seed_model)
        ids = [local.tokenizer("12+34=", add_special_tokens=False)["input_ids"]]
        sp = SamplingParams(max_new_tokens=6, seed=7)
        assert ray.get(remote._actor.__ray_call__.remote(lambda self: os.getpid())) != os.getpid()
        version, groups, seconds = remote.result(remote.submit(ids, 4, sp))
        assert version == 0 and seconds > 0
        assert [c.token_ids for c in groups[0]] == [c.token_ids for c in local.generate(ids, 4, sp)[0]]

        noisy = {k: v + 0.05 * torch.randn_like(v) for k, v in local.model.state_dict().items()}
        remote.load_state_dict(noisy, version=3)
        local.load_state_dict(noisy, version=3)
        version, groups, _ = remote.result(remote.submit(ids, 4, sp))
        assert version == 3 and remote.policy_version == 3
        assert [c.logprobs for c in groups[0]] == [c.logprobs for c in local.generate(ids, 4, sp)[0]]
        assert torch.equal(remote.model.state_dict()["lm_head.weight"], local.model.state_dict()["lm_head.weight"])
        remote.close()
    finally:
        disconnect()


def _staleness(store: str) -> list[tuple]:
    return sql(store, "SELECT DISTINCT step, policy_version FROM rollouts ORDER BY step")


def test_async_max_staleness_bounds_the_lag_and_matches_inline(prefect_server, ray_cluster, seed_model, tmp_path):
    """max_staleness=2 on the Ray actor (generation sent ahead, overlapping training; segment and stage task
    spans) and on the local runner (the same schedule, sampled inline): the same rows, step - policy_version <= 2."""
    on_ray = {"runner": "ray", "ray_address": ray_cluster}
    variants = {"ray": on_ray, "local": {}, "ray-stage": on_ray | {"task_span": "stage"}}
    stores = {name: str(tmp_path / name) for name in variants}
    for name, extra in variants.items():
        rl(RLConfig.model_validate(small_config(seed_model, stores[name], run_id=f"async-{name}", steps=6,
                                                max_staleness=2, **extra)))
    assert _staleness(stores["ray"]) == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 2), (5, 3)]
    rows = [sql(s, f"SELECT {ROWS}, policy_version, logprob_sum FROM rollouts ORDER BY ALL") for s in stores.values()]
    assert rows[0] == rows[1] == rows[2] and len(rows[0]) == 6 * 8 * 4
    lags = sql(stores["ray"], "SELECT step, rollout_generator_lag FROM metrics ORDER BY step")
    assert [lag for _, lag in lags] == [0, 1, 2, 2, 2, 2]


def test_max_staleness_composes_with_sync_every(prefect_server, seed_model, tmp_path):
    """sync_every=2, max_staleness=1: new weights only at sync points (even versions), one step behind the
    synchronous schedule, so step - policy_version <= k + sync_every - 1 = 2."""
    store = str(tmp_path / "store")
    rl(RLConfig.model_validate(small_config(seed_model, store, run_id="async-cadence", steps=6, sync_every=2,
                                            max_staleness=1)))
    assert _staleness(store) == [(0, 0), (1, 0), (2, 0), (3, 2), (4, 2), (5, 4)]
