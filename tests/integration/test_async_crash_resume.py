"""Asynchronous RL (max_staleness=2, runner: ray) SIGKILLed mid-run and resumed: the bound
step - policy_version <= 2 still holds, and the rows are those of the uninterrupted run."""

from __future__ import annotations

import signal

import pytest

from tests.integration.helpers import run_cli, small_config, sql, write_config

pytestmark = pytest.mark.slow


def test_async_bound_holds_after_sigkill_and_resume(prefect_server, ray_cluster, seed_model, tmp_path):
    def config(name: str, store: str):
        return write_config(tmp_path, small_config(seed_model, store, steps=6, prompts_per_step=4, group_size=2,
                                                   eval_every=3, eval_size=20, max_staleness=2, runner="ray",
                                                   ray_address=ray_cluster), f"{name}.json")

    ref, victim = str(tmp_path / "ref"), str(tmp_path / "victim")
    done = run_cli("run", "--config", str(config("ref", ref)), "--run-id", "async-ref")
    assert done.returncode == 0, done.stderr[-3000:]
    # killed in step 3's generate: steps 4 and 5 were already sent to the actor, sampling
    crashed = run_cli("run", "--config", str(config("victim", victim)), "--run-id", "async-victim",
                      env={"RLCADENCE_CRASH_AT": "generate:3"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert sql(victim, "SELECT max(step) FROM rollouts") == [(2,)]
    resumed = run_cli("resume", "async-victim", "--store", victim)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    lags = sql(victim, "SELECT max(step - policy_version), count(*) FROM rollouts")
    assert lags == [(2, 6 * 4 * 2)]
    cols = "step, prompt_id, sample_index, completion, reward, policy_version, logprob_sum"
    assert sql(victim, f"SELECT {cols} FROM rollouts ORDER BY ALL") == sql(ref, f"SELECT {cols} FROM rollouts ORDER BY ALL")
    assert sql(victim, "SELECT status FROM runs") == [("completed",)]
