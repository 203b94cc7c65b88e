"""The RL flow end to end on a real Prefect server, real Parquet, real DuckDB and a real tiny model."""

from __future__ import annotations

import pytest

from rlcadence.config import RLConfig
from rlcadence.flows.rl import rl
from tests.integration.helpers import run_cli, small_config, sql, write_config

pytestmark = pytest.mark.slow


def test_online_run_writes_every_table(prefect_server, seed_model, store):
    cfg = RLConfig.model_validate(small_config(seed_model, store, run_id="e2e-online"))
    summary = rl(cfg)
    assert summary["run_id"] == "e2e-online"
    assert 0.0 <= summary["final_accuracy"] <= 1.0

    rows = sql(store, "SELECT step, count(*), count(DISTINCT prompt_id), min(reward), max(reward) "
                      "FROM rollouts GROUP BY step ORDER BY step")
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert all(r[1] == 8 * 4 and r[2] == 8 for r in rows)
    assert all(0.0 <= r[3] <= r[4] <= 1.0 for r in rows)
    # online: every step's rollouts come from the weights after the previous step
    versions = sql(store, "SELECT DISTINCT step, policy_version FROM rollouts ORDER BY step")
    assert versions == [(0, 0), (1, 1), (2, 2), (3, 3)]
    # group advantages are centred per prompt; logprob sums match the per-token logprobs
    centred = sql(store, "SELECT max(abs(s)) FROM (SELECT sum(advantage) s FROM rollouts GROUP BY step, prompt_id)")
    assert centred[0][0] < 1e-6
    lp = sql(store, "SELECT max(abs(logprob_sum - list_sum(token_logprobs))) FROM rollouts")
    assert lp[0][0] < 1e-4
    metrics = sql(store, "SELECT step, reward_mean, train_grad_norm, time_generate_s, eval_accuracy FROM metrics ORDER BY step")
    assert [m[0] for m in metrics] == [0, 1, 2, 3]
    assert metrics[1][4] is not None and metrics[0][4] is None  # eval every 2 steps
    status = sql(store, "SELECT status FROM runs WHERE run_id = 'e2e-online'")
    assert status == [("completed",)]
    # per step: seconds inside the stages (step wall minus this is orchestration), and the wait for the
    # background compaction (compact_every=2: the commits of steps 2 and 3 wait for the merges of 0-1 / 2)
    timing = sql(store, "SELECT step, time_stages_s, time_compact_wait_s FROM metrics ORDER BY step")
    assert all(t[1] > 0 for t in timing) and all(t[2] >= 0 for t in timing)


def _comparable_metrics(store: str, run_id: str) -> list[tuple]:
    names = [c[0] for c in sql(store, "SELECT column_name FROM (DESCRIBE metrics)")
             if not c[0].startswith(("time_", "weight_sync_")) and c[0] not in ("created_at", "run_id", "memory_peak_rss_bytes")]
    return sql(store, f"SELECT {', '.join(names)} FROM metrics WHERE run_id = '{run_id}' ORDER BY step")


def test_segment_and_stage_task_spans_run_the_same_experiment(prefect_server, seed_model, store):
    """task_span only changes how Prefect sees the loop: the rows, metrics and final weights are the same."""
    for span in ("segment", "stage"):
        rl(RLConfig.model_validate(small_config(seed_model, store, run_id=f"span-{span}", task_span=span)))
    cols = "step, prompt_id, sample_index, completion, reward, advantage, logprob_sum, policy_version"
    seg, stg = (sql(store, f"SELECT {cols} FROM rollouts WHERE run_id = 'span-{s}' ORDER BY ALL") for s in ("segment", "stage"))
    assert len(seg) == 4 * 8 * 4 and seg == stg
    assert _comparable_metrics(store, "span-segment") == _comparable_metrics(store, "span-stage")


@pytest.mark.parametrize(("cadence", "expected"), [(2, [0, 0, 2, 2]), ("offline", [0, 0, 0, 0])])
def test_sync_cadence_sets_policy_version(prefect_server, seed_model, store, cadence, expected):
    cfg = RLConfig.model_validate(small_config(seed_model, store, run_id=f"cad-{cadence}", sync_every=cadence))
    rl(cfg)
    versions = sql(store, "SELECT DISTINCT step, policy_version FROM rollouts ORDER BY step")
    assert [v for _, v in versions] == expected


def test_cli_run_sql_and_runs(prefect_server, seed_model, store, tmp_path):
    config = write_config(tmp_path, small_config(seed_model, store, steps=2, eval_every=1))
    done = run_cli("run", "--config", str(config), "--run-id", "cli-run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final_accuracy" in done.stdout
    q = run_cli("sql", "SELECT step, avg(reward) FROM rollouts GROUP BY step ORDER BY step", "--store", store)
    assert q.returncode == 0, q.stderr
    assert q.stdout.splitlines()[0].split() == ["step", "avg(reward)"]
    assert len(q.stdout.splitlines()) == 2 + 2
    listing = run_cli("runs", "--store", store)
    assert "cli-run" in listing.stdout and "completed" in listing.stdout
