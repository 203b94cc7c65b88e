"""The RL flow with its whole store on a real S3 server (SeaweedFS on 127.0.0.1): run, query, crash and
resume from an empty local disk, and an S3 outage in the middle of a run.

Every run here uses the embedded bootstrap model (a short SFT), so the seed model itself lives on S3
too, and a resumed run needs nothing from the first process's disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from rlcadence.storage.stores import open_location
from tests.integration.helpers import CLI, run_cli, small_config, sql, write_config

pytestmark = pytest.mark.slow

STEPS, M, G = 3, 8, 4
OUTAGE_STEPS = 8
BOOTSTRAP = {"steps": 30, "batch_size": 64, "model": {"hidden_size": 64, "intermediate_size": 128},
             "environment": {"n_heldout": 50}}


def _config(tmp_path: Path, store: str, **overrides) -> Path:
    cfg = small_config(Path("unused"), store, **({"steps": STEPS, "eval_every": 10, "bootstrap": BOOTSTRAP} | overrides))
    cfg["model"] = None
    return write_config(tmp_path, cfg)


def _machine(tmp_path: Path, name: str) -> dict:
    """A separate 'machine': its own model/checkpoint cache and its own Prefect local result folder."""
    root = tmp_path / name
    root.mkdir()
    return {"RLCADENCE_CACHE": str(root / "cache"), "PREFECT_LOCAL_STORAGE_PATH": str(root / "prefect-local")}


def run_cli_env(extra: dict) -> dict:
    return os.environ.copy() | extra


def _all_objects(s3_server, store: str) -> dict[str, bytes]:
    bucket, _, prefix = store.removeprefix("s3://").partition("/")
    client = s3_server.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"].removeprefix(prefix + "/")] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def _assert_rows_exact(store: str, run_id: str, steps: int = STEPS) -> None:
    counts = sql(store, f"SELECT count(*), count(DISTINCT (step, prompt_id, sample_index)) FROM rollouts "
                        f"WHERE run_id = '{run_id}'")
    assert counts == [(steps * M * G, steps * M * G)]
    assert sql(store, f"SELECT list(step ORDER BY step) FROM metrics WHERE run_id = '{run_id}'")[0][0] == list(range(steps))


def test_rl_flow_on_s3_then_sql(prefect_server, s3_env, s3_server, tmp_path):
    store = s3_env
    done = run_cli("run", "--config", str(_config(tmp_path, store)), "--run-id", "on-s3",
                   env=_machine(tmp_path, "a"))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_rows_exact(store, "on-s3")

    # `rlcadence sql` reads the S3 store directly, with partition pruning on run and step
    q = run_cli("sql", "--store", store, "SELECT step, count(*) AS n FROM rollouts WHERE run_id = 'on-s3' "
                "AND step = 1 GROUP BY step")
    assert q.returncode == 0, q.stderr[-2000:]
    assert "32" in q.stdout
    runs = run_cli("runs", "--store", store)
    assert runs.returncode == 0 and "on-s3" in runs.stdout and "completed" in runs.stdout

    # everything the run wrote is in the bucket: tables, checkpoints, the bootstrap model, Prefect results
    objects = _all_objects(s3_server, store)
    keys = list(objects)
    for prefix in ("rollouts/run_id=on-s3/compacted-00000000-", "metrics/run_id=on-s3/compacted-00000000-", "runs/", "checkpoints/on-s3/",
                   "models/bootstrap-", "models/on-s3/model.safetensors", "prefect-results/rlcadence-on-s3-evaluate-0"):
        assert any(k.startswith(prefix) for k in keys), (prefix, sorted(keys)[:40])
    assert not [k for k in keys if k.rsplit("/", 1)[-1].startswith(".")], "temp objects left visible"

    # the final model is a transformers directory once downloaded
    model_dir = open_location(store).get_dir(tmp_path / "final", "models", "on-s3")
    assert AutoModelForCausalLM.from_pretrained(model_dir).num_parameters() > 0

    # the secret is in no object, no output, no saved Prefect block
    secret = s3_server.secret_key.encode()
    assert not [k for k, body in objects.items() if secret in body]
    for text in (done.stdout, done.stderr, q.stdout, q.stderr):
        assert s3_server.secret_key not in text
    assert s3_server.secret_key not in json.dumps(_result_block_documents())


def _result_block_documents() -> list[dict]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        docs = client.read_block_documents(include_secrets=True)
    return [d.data for d in docs if d.name and d.name.startswith("rlcadence-results-")]


def _generate_states(store: str, run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = sql(store, f"SELECT flow_run_id FROM runs WHERE run_id = '{run_id}'")[0][0]
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [t.state.name for t in task_runs if t.name.startswith("generate") and t.state]


@pytest.mark.parametrize("span", ["segment", "stage"])
def test_resume_on_a_second_machine_with_an_empty_disk(prefect_server, s3_env, s3_server, tmp_path, span):
    store, run_id = s3_env, f"moved-{span}"
    crashed = run_cli("run", "--config", str(_config(tmp_path, store, task_span=span)), "--run-id", run_id,
                      env=_machine(tmp_path, "a") | {"RLCADENCE_CRASH_AT": "write:rollouts:1"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert sql(store, f"SELECT DISTINCT step FROM rollouts WHERE run_id = '{run_id}'") == [(0,)]

    # machine b: fresh caches, another working directory; only the Prefect API and the bucket are shared.
    # Step 1's generation finished on machine a before the crash: b takes its result from S3 (the stage
    # record, or Prefect's result there); a kill armed in it proves b does not generate step 1 again.
    env = _machine(tmp_path, "b") | {"RLCADENCE_CRASH_AT": "generate:1"}
    resumed = subprocess.run([CLI, "resume", run_id, "--store", store], cwd=tmp_path / "b", capture_output=True,
                             text=True, timeout=600, env=run_cli_env(env))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_rows_exact(store, run_id)
    if span == "stage":
        assert _generate_states(store, run_id).count("Cached") == 1
    assert list((tmp_path / "b" / "cache").iterdir()), "machine b downloaded what it needed"
    assert not list((tmp_path / "b").glob(f"**/rlcadence-{run_id}-generate-*")), "results were not on b's disk"


@pytest.mark.parametrize(("s3", "outage_s", "expect_exit"), [
    # patient retries (8 attempts per write, backoff capped at 4 s; 10 per request) wait out a 5-s outage plus
    # the server's restart, however slow the machine; the defaults are tuned for failing fast, not this
    ({"write_attempts": 8, "backoff_max_seconds": 4, "max_attempts": 10}, 5, 0),
    ({"write_attempts": 1, "max_attempts": 1}, 20, 1),  # no write retries: the run fails, resume finishes it
], ids=["waits-out", "fails-then-resumes"])
def test_s3_outage_mid_run_loses_and_duplicates_nothing(prefect_server, s3_env, s3_server, tmp_path, s3,
                                                       outage_s, expect_exit):
    store = s3_env
    cfg = _config(tmp_path, store, steps=OUTAGE_STEPS, s3=s3)
    proc = subprocess.Popen([CLI, "run", "--config", str(cfg), "--run-id", "outage"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=run_cli_env(_machine(tmp_path, "a")))
    try:
        deadline = time.monotonic() + 300
        while not _has_step(store, "outage", 0):  # the run is past its bootstrap and first step
            assert proc.poll() is None and time.monotonic() < deadline, "run ended before step 0 was committed"
            time.sleep(0.5)
        assert proc.poll() is None, "the run finished before the outage"
        s3_server.stop()
        time.sleep(outage_s)
    finally:
        s3_server.start()
    out, _ = proc.communicate(timeout=600)
    assert (proc.returncode != 0) == bool(expect_exit), out[-3000:]
    if proc.returncode != 0:  # it failed cleanly, naming the endpoint and bucket; resuming finishes it
        assert s3_server.endpoint_url in out and store.split("/")[2] in out, out[-3000:]
        resumed = run_cli("resume", "outage", "--store", store, env=_machine(tmp_path, "b"))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert s3_server.secret_key not in out
    _assert_rows_exact(store, "outage", OUTAGE_STEPS)


def _has_step(store: str, run_id: str, step: int) -> bool:
    try:
        return bool(sql(store, f"SELECT 1 FROM metrics WHERE run_id = '{run_id}' AND step = {step}"))
    except Exception:  # no metrics table yet
        return False


@pytest.mark.parametrize("case", ["missing-bucket", "wrong-endpoint", "wrong-secret"])
def test_unusable_store_fails_in_seconds_naming_endpoint_and_bucket(case, prefect_server, s3_env, s3_server,
                                                                     tmp_path, monkeypatch):
    bucket = s3_env.split("/")[2]
    store, endpoint = s3_env, s3_server.endpoint_url
    if case == "missing-bucket":
        bucket = "no-such-bucket"
        store = f"s3://{bucket}/store"
    elif case == "wrong-endpoint":
        endpoint = "http://127.0.0.1:9"  # discard port: nothing listens
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-" + s3_server.secret_key[:4])
    t0 = time.monotonic()
    out = run_cli("run", "--config", str(_config(tmp_path, store)), "--run-id", "never", timeout=120)
    elapsed = time.monotonic() - t0
    assert out.returncode == 2, out.stderr[-2000:]
    assert endpoint in out.stderr and bucket in out.stderr, out.stderr[-2000:]
    assert s3_server.secret_key not in out.stdout + out.stderr
    assert "not-the-secret" not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert elapsed < 30, elapsed  # the CLI's own start-up (imports) included
