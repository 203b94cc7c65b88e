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
