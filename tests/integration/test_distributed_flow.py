"""The RL flow's train stage on 2 gloo ranks (the flow process + one spawned worker) equals one process.

Same config, three runs of 4 steps on the tiny seed model: train_world_size 1, 2 with DDP, 2 with FSDP2.
SGD with momentum at lr 0.1 (warm-up 0) so the weights move by ~1e-2 and their difference is the
gradients' difference; checkpoints every 2 steps, so FSDP2 gathers its optimizer state twice. The rollouts
(completions, rewards, advantages, kept flags, policy versions) must be identical, and the final weights
equal to float32 tolerance: measured max |diff| 1.5e-8 (DDP and FSDP2 alike) on 2 shared CPU cores; asserted
<= 1e-6 (O(0.1-1) weights, where one float32 ulp is 6e-8 to 1.2e-7, after 4 steps of
differently-ordered sums). A SIGKILL and resume at world size 2 replays step 2 on the ranks and ends
bitwise equal to the uninterrupted 2-rank run. A worker that dies between steps or inside a step's
collectives fails the step within seconds, naming its rank.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from rlcadence.config import RLConfig
from rlcadence.flows.rl import rl
from rlcadence.storage.checkpoints import checkpoint_steps
from rlcadence.storage.stores import open_location
from tests.integration.helpers import final_weights, run_cli, small_config, sql, write_config

pytestmark = pytest.mark.slow

ROLLOUT_COLS = "step, prompt_id, sample_index, completion, reward, advantage, kept, policy_version"
RUNS = {"one": (1, "ddp"), "ddp": (2, "ddp"), "fsdp2": (2, "fsdp2")}
WEIGHT_TOL = 1e-6


def _config(seed_model, store: str, world: int, strategy: str, **extra) -> dict:
    return small_config(seed_model, store, device="cpu", train_world_size=world, train_strategy=strategy,
                        checkpoint_every=2, train_timeout_s=60, eval_every=4, eval_size=20,
                        environments=[{"name": "toy_pref", "kind": "toy_pref"}],  # graded rewards: every step learns
                        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "warmup_steps": 0}, **extra)


@pytest.fixture(scope="module")
def runs(prefect_server, seed_model, tmp_path_factory):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    store = str(tmp_path_factory.mktemp("dp-flow") / "store")
    seconds = {}
    for run_id, (world, strategy) in RUNS.items():
        t0 = time.perf_counter()
        rl(RLConfig.model_validate(_config(seed_model, store, world, strategy, run_id=run_id)))
        seconds[run_id] = time.perf_counter() - t0
        assert not [p for p in multiprocessing.active_children() if p.name.startswith("rlc-train-rank")], \
            "RunState.close() stops the worker ranks"
    print(f"flow seconds: {seconds}")
    return store


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("run_id", ["ddp", "fsdp2"])
def test_two_ranks_give_the_rollouts_and_weights_of_one_process(runs, seed_model, run_id):
    store = runs
    ours = sql(store, f"SELECT {ROLLOUT_COLS} FROM rollouts WHERE run_id = '{run_id}' ORDER BY ALL")
    one = sql(store, f"SELECT {ROLLOUT_COLS} FROM rollouts WHERE run_id = 'one' ORDER BY ALL")
    assert len(ours) == 4 * 8 * 4 and ours == one
    lp = sql(store, "SELECT max(abs(a.logprob_sum - b.logprob_sum)) FROM rollouts a JOIN rollouts b "
                    f"USING (step, prompt_id, sample_index) WHERE a.run_id = 'one' AND b.run_id = '{run_id}'")[0][0]
    assert lp <= 1e-4
    assert sql(store, f"SELECT count(DISTINCT advantage) > 4 FROM rollouts WHERE run_id = '{run_id}'")[0][0]

    seed = load_file(str(seed_model / "model.safetensors"))
    want, got = final_weights(store, "one"), final_weights(store, run_id)
    moved = max(float((want[k] - seed[k]).abs().max()) for k in want if k in seed)
    assert moved > 1e-3, "the updates must move the weights, or equality proves nothing"
    diff = _max_diff(got, want)
    print(f"{run_id}: final weights max |diff| vs one process = {diff:.3g} (moved {moved:.3g})")
    assert diff <= WEIGHT_TOL
    metrics = "step, train_grad_norm, train_rows_backpropagated"
    for (s1, g1, r1), (s2, g2, r2) in zip(sql(store, f"SELECT {metrics} FROM metrics WHERE run_id = 'one' ORDER BY step"),
                                          sql(store, f"SELECT {metrics} FROM metrics WHERE run_id = '{run_id}' ORDER BY step"),
                                          strict=True):
        assert (s1, r1) == (s2, r2) and g1 == pytest.approx(g2, rel=1e-5)


def test_kill_and_resume_on_two_ranks_replays_on_the_ranks(prefect_server, seed_model, tmp_path):
    """Semi-online (sync_every=3), killed at generate[3] (checkpoint 2 written, step 2 committed): resume loads
    checkpoint 2 on both ranks, replays step 2 there (giving version 3, which the generator then syncs to),
    trains step 3, and ends bitwise equal to an uninterrupted 2-rank DDP run of the same config."""
    store = str(tmp_path / "store")
    rl(RLConfig.model_validate(_config(seed_model, store, 2, "ddp", run_id="r", sync_every=3)))
    cfg = write_config(tmp_path, _config(seed_model, store, 2, "ddp", sync_every=3))
    crashed = run_cli("run", "--config", str(cfg), "--run-id", "v", env={"RLCADENCE_CRASH_AT": "generate:3"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = run_cli("resume", "v", "--store", store, env={"RLCADENCE_CRASH_AT": "generate:0,generate:1,generate:2"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint_steps(open_location(store), "v") == [0, 2, 4]
    assert sql(store, "SELECT list(step ORDER BY step) FROM metrics WHERE run_id = 'v'")[0][0] == [0, 1, 2, 3]
    versions = "SELECT list(DISTINCT policy_version ORDER BY policy_version) FROM rollouts WHERE run_id = '{}' GROUP BY step ORDER BY step"
    assert sql(store, versions.format("v")) == sql(store, versions.format("r")) == [([0],), ([0],), ([0],), ([3],)]
    assert sql(store, f"SELECT {ROLLOUT_COLS} FROM rollouts WHERE run_id = 'v' ORDER BY ALL") == \
        sql(store, f"SELECT {ROLLOUT_COLS} FROM rollouts WHERE run_id = 'r' ORDER BY ALL")
    ours, ref = final_weights(store, "v"), final_weights(store, "r")
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def _rank1_pid(run) -> int:
    return run.group.pids[1]


def test_a_dead_rank_fails_the_step_naming_it(runs, seed_model):
    """Rank 1 killed between steps, then rank 1 exiting inside a step while rank 0 is in its collectives:
    each fails within seconds with an error naming rank 1; the next policy_at spawns a new group."""
    from rlcadence.run_state import RunState
    from rlcadence.trainer.group import TrainGroupError
    from rlcadence.trainer.replica import train_replica
    from rlcadence.trainer.step import advance

    cfg = RLConfig.model_validate(_config(seed_model, runs, 2, "ddp", run_id="ddp"))
    with RunState(cfg, "ddp") as run:
        policy = run.policy_at(2)  # checkpoint 2, loaded on both ranks
        pid = _rank1_pid(run)
        os.kill(pid, signal.SIGKILL)
        run.group.procs[0].join(timeout=10)  # reaped: the death is seen before the step, not inside it
        t0 = time.monotonic()
        with pytest.raises(TrainGroupError, match=rf"train rank 1 \(pid {pid}\) died with exit code -9 before step 2"):
            advance(run, policy, 2)
        assert time.monotonic() - t0 < 10 and run.policy is None and run.group.closed

        policy = run.policy_at(2)  # a new group
        group = run.group
        assert not group.closed and _rank1_pid(run) != pid
        t0 = time.monotonic()
        with pytest.raises(TrainGroupError, match=r"train rank 1 \(pid \d+\) died with exit code 3 during step 2"):
            group._run(("exit", 3), "step 2", lambda: train_replica(group.replica, cfg, "ddp", 2, False))
        assert time.monotonic() - t0 < 30 and group.closed
        workers = group.procs
    assert all(not p.is_alive() for p in workers)
