"""Full checkpoints every 4 steps; a SIGKILL at step 6 resumes from checkpoint 4 by replaying steps 4 and 5
from the stored rollouts (the engine is never called for them), and ends bitwise equal to a run that was
never interrupted, at every cadence: online, semi-online and offline. A kill at step 5 with s=3 needs the
generator's version 3, older than checkpoint 4: its weights must have been kept beside the checkpoint."""

from __future__ import annotations

import signal

import pytest
import torch

from rlcadence.storage.checkpoints import WEIGHTS, checkpoint_steps
from rlcadence.storage.stores import open_location
from tests.integration.helpers import final_weights, run_cli, small_config, sql, write_config

pytestmark = pytest.mark.slow

STEPS, EVERY = 8, 4


def _config(seed_model, store: str, sync_every) -> dict:
    return small_config(seed_model, store, steps=STEPS, checkpoint_every=EVERY, sync_every=sync_every,
                        prompts_per_step=4, group_size=4, eval_every=100, eval_size=20, keep_checkpoints=1)


@pytest.fixture(scope="module")
def reference_runs(prefect_server, seed_model, tmp_path_factory):
    """Uninterrupted runs, one per cadence, made on first use."""
    stores: dict[object, str] = {}

    def get(sync_every) -> str:
        if sync_every not in stores:
            tmp = tmp_path_factory.mktemp(f"reference-{sync_every}")
            cfg = write_config(tmp, _config(seed_model, str(tmp / "store"), sync_every))
            done = run_cli("run", "--config", str(cfg), "--run-id", "r")
            assert done.returncode == 0, done.stderr[-3000:]
            stores[sync_every] = str(tmp / "store")
        return stores[sync_every]

    return get


@pytest.mark.parametrize(("sync_every", "kill"), [(1, 6), (3, 6), ("offline", 6), (3, 5)])
def test_kill_replays_from_checkpoint_4_and_matches(reference_runs, seed_model, tmp_path, sync_every, kill):
    ref_store, store = reference_runs(sync_every), str(tmp_path / "victim")

    cfg = write_config(tmp_path, _config(seed_model, store, sync_every))
    crashed = run_cli("run", "--config", str(cfg), "--run-id", "v", env={"RLCADENCE_CRASH_AT": f"generate:{kill}"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    loc = open_location(store)
    assert checkpoint_steps(loc, "v") == [0, 4], "only the checkpoints due (every 4 steps) were written"
    if (sync_every, kill) == (3, 5):  # generator version 3 < checkpoint 4 is in use at step 5: kept as weights
        assert checkpoint_steps(loc, "v", WEIGHTS) == [3]
    assert sql(store, "SELECT list(step ORDER BY step) FROM metrics")[0][0] == list(range(kill))

    # Any engine call for a step before the kill point would SIGKILL the resume: steps 4, 5 must be replayed.
    guard = ",".join(f"generate:{s}" for s in range(kill))
    resumed = run_cli("resume", "v", "--store", store, env={"RLCADENCE_CRASH_AT": guard})
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    ours, ref = final_weights(store, "v"), final_weights(ref_store, "r")
    assert ours.keys() == ref.keys()
    for name in ref:
        assert torch.equal(ours[name], ref[name]), name
    cols = "step, prompt_id, sample_index, completion, reward, advantage, logprob_sum, policy_version"
    assert sql(store, f"SELECT {cols} FROM rollouts ORDER BY ALL") == sql(ref_store, f"SELECT {cols} FROM rollouts ORDER BY ALL")
    metric_cols = "step, train_grad_norm, train_entropy, time_checkpoint_s IS NULL, sparsity_unchanged_vs_last_sync, sync_generator_version"
    assert sql(store, f"SELECT {metric_cols} FROM metrics ORDER BY step") == \
        sql(ref_store, f"SELECT {metric_cols} FROM metrics ORDER BY step")
