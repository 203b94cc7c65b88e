"""SIGKILL a run mid-step, resume it, and check nothing is repeated, skipped, or different.

The kill is a real SIGKILL from a fail point (rlcadence.faults), at a chosen step: during generation,
or half-way through writing the rollouts Parquet file.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from tests.integration.helpers import final_weights, run_cli, small_config, sql, write_config

pytestmark = pytest.mark.slow

STEPS, M, G = 5, 8, 4


@pytest.fixture(scope="module")
def reference_run(prefect_server, seed_model, tmp_path_factory):
    """The same experiment, never interrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    store = str(tmp / "store")
    cfg = write_config(tmp, small_config(seed_model, store, steps=STEPS, eval_every=10))
    done = run_cli("run", "--config", str(cfg), "--run-id", "reference")
    assert done.returncode == 0, done.stderr[-3000:]
    return store


def _flow_task_states(store: str, run_id: str) -> dict[str, list[str]]:
    """Task-run state names of the run's latest flow run, by task name prefix (from the Prefect API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = sql(store, f"SELECT flow_run_id FROM runs WHERE run_id = '{run_id}'")[0][0]
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for tr in task_runs:
        states.setdefault(tr.name.rsplit("-", 1)[0], []).append(tr.state.name if tr.state else "?")
    return states


@pytest.mark.parametrize("crash_at", ["generate:2", "write:rollouts:2"])
def test_sigkill_then_resume_matches_uninterrupted(reference_run, seed_model, tmp_path, crash_at):
    store = str(tmp_path / "store")
    cfg = write_config(tmp_path, small_config(seed_model, store, steps=STEPS, eval_every=10))
    crashed = run_cli("run", "--config", str(cfg), "--run-id", "victim", env={"RLCADENCE_CRASH_AT": crash_at})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]

    # What queries see after the crash: only the completed steps, no partial file.
    assert sql(store, "SELECT DISTINCT step FROM rollouts ORDER BY step") == [(0,), (1,)]
    leftovers = list(Path(store).rglob("*.tmp"))
    if crash_at.startswith("write"):
        assert leftovers, "the fail point should have left a half-written temp file"

    resumed = run_cli("resume", "victim", "--store", store)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # No duplicated and no missing rollout rows; the step counter continued.
    counts = sql(store, "SELECT count(*), count(DISTINCT (step, prompt_id, sample_index)) FROM rollouts")
    assert counts == [(STEPS * M * G, STEPS * M * G)]
    assert sql(store, "SELECT list(step ORDER BY step) FROM metrics")[0][0] == list(range(STEPS))
    assert not [p for p in Path(store).rglob("*.tmp")], "resume should sweep crashed temp files"

    # Completed stages were skipped: after a crash in the Parquet write, generation came back Cached.
    states = _flow_task_states(store, "victim")
    if crash_at.startswith("write"):
        assert states["generate"].count("Cached") == 1
    else:
        assert "Cached" not in states["generate"]
    assert len(states["train"]) == STEPS - 2

    # Same seed on CPU: bit-identical final weights and identical rollouts.
    ours, ref = final_weights(store, "victim"), final_weights(reference_run, "reference")
    assert ours.keys() == ref.keys()
    for name in ref:
        assert torch.equal(ours[name], ref[name]), name
    cols = "step, prompt_id, sample_index, completion, reward, advantage, logprob_sum"
    assert sql(store, f"SELECT {cols} FROM rollouts ORDER BY ALL") == sql(reference_run, f"SELECT {cols} FROM rollouts ORDER BY ALL")
