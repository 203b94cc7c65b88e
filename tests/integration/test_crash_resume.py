"""SIGKILL a run at any point, continue it by every documented path, and check nothing is repeated,
skipped, or different from a run never interrupted, and nothing is left Running in Prefect.

Kills are real SIGKILLs: from a fail point (rlcadence.faults) at a chosen place, or from outside at
seeded random times. The end state is compared exactly: rollout rows, metrics, bitwise final weights.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.integration.helpers import CLI, final_weights, run_cli, small_config, sql, write_config

pytestmark = pytest.mark.slow

STEPS, M, G = 4, 4, 2
PREFECT = str(Path(sys.executable).parent / "prefect")
ENTRYPOINT = "rlcadence.flows.rl:rl"


def _config(tmp: Path, seed_model: Path, store: str) -> Path:
    return write_config(tmp, small_config(seed_model, store, steps=STEPS, prompts_per_step=M, group_size=G,
                                          eval_every=2, eval_size=20))


@pytest.fixture(scope="module")
def reference_run(prefect_server, seed_model, tmp_path_factory):
    """The same experiment, never interrupted; its wall time scales the random kills."""
    tmp = tmp_path_factory.mktemp("reference")
    store = str(tmp / "store")
    t0 = time.monotonic()
    done = run_cli("run", "--config", str(_config(tmp, seed_model, store)), "--run-id", "reference")
    assert done.returncode == 0, done.stderr[-3000:]
    return store, time.monotonic() - t0


def _metrics(store: str) -> list[dict]:
    """Metric rows by column name, without what differs between any two runs (timings, peak RSS, and the
    weight-sync figures: recorded by the process that synced, so a resumed process whose generate stage came
    back Cached records none for that step)."""
    names = [c[0] for c in sql(store, "SELECT column_name FROM (DESCRIBE metrics)")
             if not c[0].startswith(("time_", "weight_sync_"))
             and c[0] not in ("created_at", "run_id", "memory_peak_rss_bytes")]
    rows = sql(store, f"SELECT {', '.join(names)} FROM metrics ORDER BY step")
    return [dict(zip(names, r, strict=True)) for r in rows]


def assert_same_as_reference(store: str, run_id: str, reference: str) -> None:
    """Rows, metrics and weights of ``run_id`` equal the uninterrupted run's; no temp file is left."""
    counts = sql(store, "SELECT count(*), count(DISTINCT (step, prompt_id, sample_index)) FROM rollouts")
    assert counts == [(STEPS * M * G, STEPS * M * G)]
    cols = "step, prompt_id, sample_index, completion, reward, advantage, logprob_sum"
    assert sql(store, f"SELECT {cols} FROM rollouts ORDER BY ALL") == sql(reference, f"SELECT {cols} FROM rollouts ORDER BY ALL")
    assert _metrics(store) == _metrics(reference)
    ours, ref = final_weights(store, run_id), final_weights(reference, "reference")
    assert ours.keys() == ref.keys()
    for name in ref:
        assert torch.equal(ours[name], ref[name]), name
    assert sql(store, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("completed",)]
    assert not [p for p in Path(store).rglob("*.tmp")], "resume should sweep every temp file and directory"


def _prefect_states(run_id: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """States of every flow run of ``run_id`` (by id) and of their task runs (by task name prefix)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

    from rlcadence.tasks.crashed import _run_id_of

    with get_client(sync_client=True) as client:
        flow_runs = [fr for fr in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["rlcadence-rl"])))
                     if _run_id_of(fr) == run_id]
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[f.id for f in flow_runs])))
    tasks: dict[str, list[str]] = {}
    for tr in task_runs:
        tasks.setdefault(re.match(r"[a-z_]*", tr.name).group(), []).append(tr.state.name if tr.state else "?")
    return {str(f.id): f.state.name for f in flow_runs}, tasks


def _assert_nothing_left_running(run_id: str, within_s: float = 20.0) -> None:
    """Task-run states reach the server as events, processed a moment after the process exits."""
    deadline = time.monotonic() + within_s
    while True:
        flows, tasks = _prefect_states(run_id)
        left = [s for s in flows.values() if s in ("Running", "Pending")]
        left += [(n, s) for n, ss in tasks.items() for s in ss if s in ("Running", "Pending")]
        if flows and not left:
            return
        assert time.monotonic() < deadline, (flows, tasks)
        time.sleep(1)


@pytest.mark.parametrize(("crash_at", "span"), [("generate:2", "segment"), ("write:rollouts:2", "segment"),
                                              ("write:rollouts:2", "stage")])
def test_sigkill_then_resume_matches_uninterrupted(reference_run, seed_model, tmp_path, crash_at, span):
    store = str(tmp_path / "store")
    run_id = f"victim-{crash_at.replace(':', '-')}-{span}"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(json.loads(_config(tmp_path, seed_model, store).read_text()) | {"task_span": span}))
    crashed = run_cli("run", "--config", str(cfg), "--run-id", run_id, env={"RLCADENCE_CRASH_AT": crash_at})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]

    # What queries see after the crash: only the completed steps, no partial file.
    assert sql(store, "SELECT DISTINCT step FROM rollouts ORDER BY step") == [(0,), (1,)]
    if crash_at.startswith("write"):
        assert list(Path(store).rglob("*.tmp")), "the fail point should have left a half-written temp file"

    # Completed stages are skipped: killed in score, step 2's generation comes back from the store (segment)
    # or Prefect's cache (stage). Arming a kill in it proves it: generating again would kill the resume.
    skip = {"RLCADENCE_CRASH_AT": "generate:2"} if crash_at.startswith("write") else {}
    resumed = run_cli("resume", run_id, "--store", store, env=skip)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_as_reference(store, run_id, reference_run[0])

    # The killed flow run and the task run it was in were marked Crashed when the resume took the run over.
    _assert_nothing_left_running(run_id)
    flows, tasks = _prefect_states(run_id)
    assert sorted(flows.values()) == ["Completed", "Crashed"]
    killed_in = "steps" if span == "segment" else "generate" if crash_at.startswith("generate") else "score"
    assert tasks[killed_in].count("Crashed") == 1
    if span == "stage":
        assert tasks["generate"].count("Cached") == (killed_in == "score")


def test_kill_at_startup_before_any_store_write_then_resume(reference_run, seed_model, tmp_path):
    store = str(tmp_path / "store")
    never = run_cli("resume", "ghost", "--store", store)
    assert never.returncode == 2 and never.stderr.count("\n") == 1, never.stderr
    assert "never started" in never.stderr and "rlcadence run --run-id ghost" in never.stderr

    crashed = run_cli("run", "--config", str(_config(tmp_path, seed_model, store)), "--run-id", "early",
                      env={"RLCADENCE_CRASH_AT": "startup:0"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert sorted(p.name for p in Path(store).iterdir()) == ["runs"]  # the record alone: no Prefect, no model
    resumed = run_cli("resume", "early", "--store", store)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_as_reference(store, "early", reference_run[0])


@pytest.mark.parametrize("reaper", ["rlcadence runs", "worker"])
def test_kill_mid_step_then_prefect_flow_run_retry(reference_run, seed_model, tmp_path, reaper):
    """The README's Prefect path: the killed flow run is marked Crashed (by `rlcadence runs`, or as a
    worker does it for a deployed run), then `prefect flow-run retry` continues the same flow run."""
    store, run_id = str(tmp_path / "store"), f"retried-{reaper.split()[-1]}"
    crashed = run_cli("run", "--config", str(_config(tmp_path, seed_model, store)), "--run-id", run_id,
                      env={"RLCADENCE_CRASH_AT": "generate:2"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    flow_run_id = sql(store, f"SELECT flow_run_id FROM runs WHERE run_id = '{run_id}'")[0][0]
    refused = subprocess.run([PREFECT, "flow-run", "retry", flow_run_id, "--entrypoint", ENTRYPOINT],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "RUNNING" in refused.stdout + refused.stderr  # Prefect's own refusal

    if reaper == "rlcadence runs":
        listed = run_cli("runs", "--store", store)
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert f"prefect flow-run retry {flow_run_id}" in listed.stdout
        assert sql(store, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("crashed",)]
        flows, tasks = _prefect_states(run_id)
        assert flows == {flow_run_id: "Crashed"} and tasks["steps"].count("Crashed") == 1  # steps[0-2]
    else:  # a worker sees its flow process die and sets the flow run Crashed; task runs stay Running
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Crashed(message="worker: process exited -9"), force=True)
        assert "Running" in _prefect_states(run_id)[1]["steps"]

    retried = subprocess.run([PREFECT, "flow-run", "retry", flow_run_id, "--entrypoint", ENTRYPOINT],
                             capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert retried.returncode == 0, (retried.stdout + retried.stderr)[-3000:]
    assert_same_as_reference(store, run_id, reference_run[0])
    flows, _ = _prefect_states(run_id)
    assert flows == {flow_run_id: "Completed"}  # the same flow run, retried
    _assert_nothing_left_running(run_id)


def test_kill_during_checkpoint_write_leaves_no_temp_dir(reference_run, seed_model, tmp_path):
    store = str(tmp_path / "store")
    crashed = run_cli("run", "--config", str(_config(tmp_path, seed_model, store)), "--run-id", "ckpt",
                      env={"RLCADENCE_CRASH_AT": "write:checkpoint:4"})  # the last step: checkpoint_every=10
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    ckpts = Path(store) / "checkpoints" / "ckpt"
    assert [p.name for p in ckpts.iterdir() if p.name.startswith(".step-000004.")], "a half-written temp dir"
    resumed = run_cli("resume", "ckpt", "--store", store)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]
    assert_same_as_reference(store, "ckpt", reference_run[0])


def test_seeded_random_external_kills(reference_run, seed_model, tmp_path):
    """Five SIGKILLs from outside at seeded random times across the run's wall time, each resumed (or,
    killed before the run was recorded, started again as the error says) and checked exactly."""
    reference, wall = reference_run
    rng = random.Random(16)
    kill_times = sorted(rng.uniform(0.02, 0.95) * wall for _ in range(5))
    for i, t in enumerate(kill_times):
        store, run_id = str(tmp_path / f"store-{i}"), f"random-{i}"
        cfg = _config(tmp_path, seed_model, store)
        proc = subprocess.Popen([CLI, "run", "--config", str(cfg), "--run-id", run_id],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=t)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, like a lost machine
            proc.wait()
        resumed = run_cli("resume", run_id, "--store", store)
        if resumed.returncode == 2 and "never started" in resumed.stderr:  # killed while importing
            resumed = run_cli("run", "--config", str(cfg), "--run-id", run_id)
        assert resumed.returncode == 0, f"kill at {t:.1f}s: {resumed.stderr[-3000:]}"
        assert_same_as_reference(store, run_id, reference)
        _assert_nothing_left_running(run_id)


@pytest.mark.parametrize("crash_at", ["compact-deleting:1", "compact-deleted:3"])
def test_kill_inside_compaction_then_resume_matches_uninterrupted(reference_run, seed_model, tmp_path, crash_at):
    """Compaction runs in the commit stage every 2 steps (and at the run's end): a SIGKILL half-way through
    deleting the merged step files (step 1), or before publishing the merge (step 3, the last), leaves
    views that read every committed row once; the resume finishes the merge, replays from compacted
    rollouts where it needs to, and ends equal to the uninterrupted run."""
    store = str(tmp_path / "store")
    run_id = f"compact-{crash_at.replace(':', '-')}"
    crashed = run_cli("run", "--config", str(_config(tmp_path, seed_model, store)), "--run-id", run_id,
                      env={"RLCADENCE_CRASH_AT": crash_at})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    killed_at = int(crash_at.rsplit(":", 1)[1])
    assert list(Path(store).rglob(".compacted-*.pending")), "the kill should leave the merge pending"
    committed = list(range(killed_at + 1))
    assert sql(store, "SELECT list(step ORDER BY step) FROM metrics")[0][0] == committed
    assert sql(store, "SELECT count(*), count(DISTINCT (step, prompt_id, sample_index)) FROM rollouts "
                      f"WHERE step <= {killed_at}") == [(len(committed) * M * G, len(committed) * M * G)]

    resumed = run_cli("resume", run_id, "--store", store)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_as_reference(store, run_id, reference_run[0])
    assert not list(Path(store).rglob(".compacted-*")), "the resume should finish the interrupted merge"
    names = sorted(p.name for p in (Path(store) / "rollouts" / f"run_id={run_id}").iterdir())
    assert names == [f"compacted-00000000-{STEPS - 1:08d}.parquet"]
