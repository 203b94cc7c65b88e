"""The store on a real S3 server (SeaweedFS on 127.0.0.1): files, tables, SQL, failures and outages."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from rlcadence.storage import s3 as s3mod
from rlcadence.storage import tables
from rlcadence.storage.query import QueryError, connect, run_sql
from rlcadence.storage.s3 import S3Settings, S3StoreLocation, StoreError, open_s3_location
from rlcadence.storage.seaweed import free_port
from rlcadence.storage.stores import open_location

REPO = Path(__file__).resolve().parents[2]


def rollouts(run_id: str, step: int, prompts: int = 3, group: int = 4) -> pa.Table:
    """``prompts`` groups of ``group`` samples; prompt k passes samples with index < k (so p0 always fails)."""
    rows = []
    for k in range(prompts):
        for i in range(group):
            reward = float(i < k)
            rows.append(
                {
                    "run_id": run_id,
                    "step": step,
                    "policy_version": step,
                    "environment": "arith",
                    "prompt_id": f"p{k}",
                    "sample_index": i,
                    "prompt": f"{k}+1=",
                    "gold": str(k + 1),
                    "completion": str(k + 1) if reward else "0",
                    "completion_tokens": 1,
                    "token_ids": [k],
                    "token_logprobs": [-0.5],
                    "logprob_sum": -0.5,
                    "logprob_mean": -0.5,
                    "finish_reason": "stop",
                    "reward": reward,
                    "verifier_detail": "",
                    "advantage": 0.0,
                    "kept": True,
                    "generate_seconds": 0.1,
                    "score_seconds": 0.01,
                    "created_at": tables.utcnow(),
                }
            )
    return pa.Table.from_pylist(rows, schema=tables.ROLLOUT_SCHEMA)


def assert_no_secret(secret: str, *texts: str) -> None:
    for t in texts:
        assert secret not in t


def full_text(e: BaseException) -> str:
    return str(e) + repr(e) + "".join(traceback.format_exception(type(e), e, e.__traceback__))


def settle_settings(endpoint_url: str, **kw) -> S3Settings:
    """Fast-failing settings for outage tests."""
    base = dict(max_attempts=2, write_attempts=3, backoff_seconds=0.2, backoff_max_seconds=1.0)
    return S3Settings(endpoint_url=endpoint_url, connect_timeout_seconds=1.0, **{**base, **kw})


# -- settings (no server) -----------------------------------------------------------------------------
def test_settings_follow_the_aws_env_conventions(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3-specific:2/")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    s = S3Settings()
    assert (s.endpoint_url, s.region) == ("https://s3-specific:2", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert (S3Settings().endpoint_url, S3Settings().region) == ("http://generic:1", "eu-north-1")
    assert "access" not in " ".join(S3Settings.model_fields) and "secret" not in " ".join(
        S3Settings.model_fields
    )
    with pytest.raises(ValueError, match="http:// or https://"):
        S3Settings(endpoint_url="127.0.0.1:9000")


# -- files -------------------------------------------------------------------------------------------
def test_files_round_trip(s3_env, tmp_path):
    loc = open_location(s3_env)
    assert isinstance(loc, S3StoreLocation) and not loc.is_local
    loc.write_bytes(b"hello", "a", "b.txt")
    loc.write_bytes(b"world", "a", "c", "d.txt")
    assert loc.read_bytes("a", "b.txt") == b"hello"
    assert loc.list_files() == ["a/b.txt", "a/c/d.txt"]
    assert loc.list_files("a", suffix=".txt") == ["a/b.txt", "a/c/d.txt"]
    assert loc.list_dirs("a") == ["c"]
    assert loc.exists("a", "b.txt") and not loc.exists("nope")

    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.bin").write_bytes(os.urandom(3000))
    (src / "sub" / "config.json").write_text("{}")
    loc.put_dir(src, "checkpoints", "step=1")
    assert loc.dir_complete("checkpoints", "step=1")
    assert not loc.dir_complete("checkpoints", "step=2")
    out = loc.get_dir(tmp_path / "back", "checkpoints", "step=1")
    assert (out / "model.bin").read_bytes() == (src / "model.bin").read_bytes()
    assert (out / "sub" / "config.json").read_text() == "{}"


def test_killed_writer_leaves_only_an_invisible_temp_object_that_sweep_removes(s3_env):
    """A real SIGKILL half-way through a Parquet write (rlcadence.faults) against S3."""
    loc = open_location(s3_env)
    tables.write_step_table(loc, "rollouts", "r1", 0, rollouts("r1", 0))
    code = (
        "from rlcadence.storage import tables; from rlcadence.storage.stores import open_location;"
        "from tests.integration.test_s3_store import rollouts;"
        f"loc = open_location({s3_env!r});"
        "tables.write_step_table(loc, 'rollouts', 'r1', 1, rollouts('r1', 1))"
    )
    env = {**os.environ, "RLCADENCE_CRASH_AT": "write:rollouts:1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    assert tables.committed_steps(loc, "rollouts", "r1") == [0]  # the half-written step is not there
    assert connect(loc).sql("SELECT DISTINCT step FROM rollouts").fetchall() == [(0,)]
    assert loc.sweep_temp_files() == 1
    assert loc.sweep_temp_files() == 0


# -- tables and SQL ------------------------------------------------------------------------------------
def test_tables_and_sql_over_s3(s3_env):
    loc = open_location(s3_env)
    for run in ("r1", "r2"):
        tables.write_run_status(loc, run, "running", {"lr": 1e-3, "run": run})
        for step in range(3):
            tables.write_step_table(loc, "rollouts", run, step, rollouts(run, step))
            tables.write_metrics(loc, run, step, {"reward/mean": 0.5, "loss": 1.0 / (step + 1)})
        tables.write_run_status(loc, run, "completed", {"lr": 1e-3, "run": run})
    assert tables.read_run_params(loc, "r2") == {"lr": 1e-3, "run": "r2"}
    assert tables.committed_steps(loc, "metrics", "r1") == [0, 1, 2]

    con = connect(loc)
    # prompt k passes k of 4 samples: pass rates 0, 1/4, 2/4
    rows = con.sql("SELECT prompt_id, avg(reward) FROM rollouts GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("p0", 0.0), ("p1", 0.25), ("p2", 0.5)]
    assert con.sql("SELECT run_id, status FROM runs ORDER BY 1").fetchall() == [
        ("r1", "completed"),
        ("r2", "completed"),
    ]
    assert con.sql("SELECT count(*) FROM metrics WHERE run_id = 'r2'").fetchone() == (3,)

    # Hive pruning: a filter on the partition columns opens one file of the six. Shown by replacing
    # another file with garbage: a scan that opened it would fail.
    loc.write_bytes(b"not parquet", *tables.step_file("rollouts", "r1", 0))
    sql = "SELECT count(*), min(run_id), min(step) FROM rollouts WHERE run_id = 'r2' AND step = 1"
    assert con.sql(sql).fetchone() == (12, "r2", 1)


def test_sql_over_s3_holds_no_secret_and_cannot_write(s3_env, s3_server):
    loc = open_location(s3_env)
    tables.write_metrics(loc, "r1", 0, {"x": 1.0})
    before = {f: loc.read_bytes(f) for f in loc.list_files()}
    con = connect(loc)
    assert con.sql("SELECT count(*) FROM duckdb_secrets()").fetchone() == (0,)  # reads go through pyarrow
    for sql in (f"COPY (SELECT 1 AS x) TO '{loc.uri_of('metrics', 'evil.parquet')}'",
                f"SELECT * FROM read_parquet('{loc.uri_of('metrics', '**', '*.parquet')}')", "LOAD httpfs"):
        with pytest.raises(QueryError):
            run_sql(con, sql)
    assert {f: loc.read_bytes(f) for f in loc.list_files()} == before


def test_duckdb_secret_is_redacted_and_scoped(s3_env, s3_server):
    """configure_duckdb: for a user's own DuckDB connection over an S3 store (httpfs, a scoped secret)."""
    loc = open_location(s3_env)
    tables.write_metrics(loc, "r1", 0, {"x": 1.0})
    con = duckdb.connect()
    s3mod.configure_duckdb(con, loc)
    (secret,) = con.sql("SELECT secret_string FROM duckdb_secrets()").fetchone()
    assert "secret=redacted" in secret and f"scope={s3_env.rsplit('/', 1)[0]}" in secret
    assert_no_secret(s3_server.secret_key, secret)


def test_duckdb_without_httpfs_reads_s3_through_pyarrow(s3_env, monkeypatch):
    loc = open_location(s3_env)
    for step in range(2):
        tables.write_step_table(loc, "rollouts", "r1", step, rollouts("r1", step))
    monkeypatch.setattr(s3mod, "httpfs_extension_path", lambda: None)
    con = duckdb.connect()
    s3mod.configure_duckdb(con, loc)
    con.execute(f"CREATE VIEW rollouts AS SELECT * FROM read_parquet('{loc.uri_of('rollouts', '**', '*.parquet')}')")
    assert con.sql("SELECT step, count(*) FROM rollouts GROUP BY 1 ORDER BY 1").fetchall() == [
        (0, 12),
        (1, 12),
    ]
    assert con.sql("SELECT count(*) FROM rollouts WHERE step = 1").fetchone() == (12,)


def test_duckdb_errors_do_not_leak_the_secret(s3_env, s3_server, monkeypatch):
    loc = open_location(s3_env)
    monkeypatch.setattr(
        s3mod, "_secret_sql", lambda settings, creds, bucket: f"CREATE SECRET oops ('{creds.secret_key}'"
    )
    with pytest.raises(StoreError, match="cannot configure DuckDB") as ei:
        s3mod.configure_duckdb(duckdb.connect(), loc)
    assert_no_secret(s3_server.secret_key, full_text(ei.value))


def test_two_runs_never_overwrite_each_other(s3_env):
    loc = open_location(s3_env)

    def run(run_id: str) -> None:
        for step in range(4):
            tables.write_step_table(loc, "rollouts", run_id, step, rollouts(run_id, step))
            tables.write_run_status(loc, run_id, f"step{step}", {"run": run_id})

    threads = [threading.Thread(target=run, args=(r,)) for r in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # rewriting a step (a retried task) replaces that run's file, never duplicates it
    tables.write_step_table(loc, "rollouts", "a", 3, rollouts("a", 3))

    con = connect(loc)
    got = con.sql("SELECT run_id, step, count(*) FROM rollouts GROUP BY ALL ORDER BY ALL").fetchall()
    assert got == [(r, s, 12) for r in ("a", "b") for s in range(4)]
    # and every file holds only its own run's rows (run_id as written inside the file, not from the path)
    files = (
        f"read_parquet('{loc.uri_of('rollouts', '**', '*.parquet')}', hive_partitioning=false, filename=true)"
    )
    stray = f"SELECT count(*) FROM {files} WHERE filename NOT LIKE '%/run_id=' || run_id || '/%'"
    raw = duckdb.connect()  # read_parquet on s3:// paths: a plain connection with httpfs, not the locked one
    s3mod.configure_duckdb(raw, loc)
    assert raw.sql(stray).fetchone() == (0,)
    assert con.sql("SELECT run_id, status FROM runs ORDER BY 1").fetchall() == [
        ("a", "step3"),
        ("b", "step3"),
    ]
    assert len(loc.list_files("runs", "run_id=a")) == 4


def test_pickled_location_carries_no_secret(s3_env, s3_server):
    loc = open_location(s3_env)
    loc.write_bytes(b"x", "k")
    blob = pickle.dumps(loc)
    assert s3_server.secret_key.encode() not in blob
    assert_no_secret(s3_server.secret_key, repr(loc), str(loc))
    assert pickle.loads(blob).read_bytes("k") == b"x"  # keys re-resolved from the environment


# -- failing fast, and saying why --------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["wrong endpoint", "wrong credentials", "missing bucket"])
def test_open_fails_fast_and_says_why(case, s3_env, s3_server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    bucket = s3_env.split("/")[2]
    uri, endpoint = s3_env, s3_server.endpoint_url
    if case == "wrong endpoint":
        endpoint = f"http://127.0.0.1:{free_port()}"  # closed port
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    elif case == "wrong credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + s3_server.secret_key)
    else:
        bucket = "no-such-bucket"
        uri = f"s3://{bucket}/store"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as ei:
        open_location(uri)
    assert time.monotonic() - t0 < 5
    msg = str(ei.value)
    assert msg.startswith(case) and endpoint in msg and repr(bucket) in msg, msg
    assert_no_secret(s3_server.secret_key, full_text(ei.value), caplog.text)


def test_missing_credentials_and_missing_prefect_aws_are_clear(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="no AWS credentials"):
        open_location(s3_env)
    try:
        import prefect_aws  # noqa: F401
    except ImportError:
        with pytest.raises(StoreError, match="needs the prefect-aws package"):
            open_s3_location(s3_env, S3Settings(credentials_block="my-aws"))


# -- outages -------------------------------------------------------------------------------------------
def test_outage_write_fails_cleanly_and_leaves_nothing(s3_env, s3_server, caplog):
    loc = open_s3_location(s3_env, settle_settings(s3_server.endpoint_url))
    s3_server.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=r"failed after 3 attempt\(s\)") as ei:
            tables.write_step_table(loc, "rollouts", "r1", 0, rollouts("r1", 0))
        assert time.monotonic() - t0 < 20
        assert s3_server.endpoint_url in str(ei.value)
        assert caplog.text.count("retrying in") == 2  # attempts 1 and 2 retried, attempt 3 gave up
    finally:
        s3_server.start()
    assert loc.list_files() == []
    tables.write_step_table(loc, "rollouts", "r1", 0, rollouts("r1", 0))  # the task retry
    assert loc.list_files() == ["rollouts/run_id=r1/step=0/part-0.parquet"]
    assert_no_secret(s3_server.secret_key, full_text(ei.value), caplog.text)


def test_outage_shorter_than_the_backoff_is_retried_through(s3_env, s3_server, caplog):
    loc = open_s3_location(
        s3_env, settle_settings(s3_server.endpoint_url, write_attempts=10, backoff_max_seconds=1.0)
    )
    s3_server.stop()
    restarter = threading.Timer(1.0, s3_server.start)
    restarter.start()
    try:
        tables.write_step_table(loc, "rollouts", "r1", 0, rollouts("r1", 0))
    finally:
        restarter.join()
        s3_server.start()
    assert "retrying in" in caplog.text  # it did fail first, then went through
    assert loc.list_files() == ["rollouts/run_id=r1/step=0/part-0.parquet"]
    assert connect(loc).sql("SELECT count(*) FROM rollouts").fetchone() == (12,)


class CuttingProxy:
    """A TCP proxy to the S3 server that resets a connection once it carried ``cut_after`` request bytes.

    ``cuts`` limits how many connections get cut (None: all), to make a flaky network, not a dead one.
    """

    def __init__(self, target_port: int, cut_after: int, cuts: int | None = None):
        self.target, self.cut_after, self.cuts_left, self.cut = target_port, cut_after, cuts, 0
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _should_cut(self) -> bool:
        with self.lock:
            if self.cuts_left is not None and self.cuts_left <= 0:
                return False
            self.cut += 1
            if self.cuts_left is not None:
                self.cuts_left -= 1
            return True

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        sent = 0
        try:
            while data := client.recv(1 << 16):
                if sent + len(data) > self.cut_after and self._should_cut():
                    upstream.sendall(data[: self.cut_after - sent])
                    for s in (client, upstream):  # RST, as a dropped network would
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        s.close()
                    return
                upstream.sendall(data)
                sent += len(data)
        except OSError:
            pass

    @staticmethod
    def _down(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(1 << 16):
                client.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        """Stop listening and drop every proxied connection (open ones would delay the server's shutdown)."""
        self.sock.close()
        for s in self.conns:
            s.close()


@pytest.mark.parametrize("size_mb", [4, 12])  # one PUT; a multipart upload (pyarrow parts are 10 MB)
def test_upload_cut_mid_body_never_leaves_a_partial_object(size_mb, s3_env, s3_server):
    port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    payload = os.urandom(size_mb << 20)
    client = s3_server.client()
    bucket, prefix = s3_env[5:].split("/", 1)

    dead = CuttingProxy(port, cut_after=1 << 20)  # every connection dies after 1 MB
    try:
        loc = open_s3_location(s3_env, settle_settings(f"http://127.0.0.1:{dead.port}"))
        with pytest.raises(StoreError, match="failed after 3 attempt"):
            loc.write_bytes(payload, "big.bin")
    finally:
        dead.close()
    assert dead.cut >= 3
    assert client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount") == 0  # nothing visible
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket)  # and no parts left behind

    flaky = CuttingProxy(port, cut_after=1 << 20, cuts=2)  # two dropped connections, then a good network
    try:
        loc = open_s3_location(s3_env, settle_settings(f"http://127.0.0.1:{flaky.port}"))
        loc.write_bytes(payload, "big.bin")
    finally:
        flaky.close()
    assert flaky.cut == 2
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(f"{prefix}/big.bin", len(payload))]
    direct = open_s3_location(s3_env, settle_settings(s3_server.endpoint_url))  # the proxy is closed now
    assert direct.read_bytes("big.bin") == payload
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket)  # failed attempts' parts aborted
