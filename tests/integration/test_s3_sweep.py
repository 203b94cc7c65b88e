"""On a real S3 server: what a killed writer leaves (objects of a checkpoint without its `_COMPLETE`
marker, unfinished multipart uploads) is swept when the run is taken over; complete data is kept."""

from __future__ import annotations

import time

import pytest

from rlcadence.storage import run_records
from rlcadence.storage.checkpoints import checkpoint_steps, publish_checkpoint, sweep_checkpoint_temp
from rlcadence.storage.stores import open_location

pytestmark = pytest.mark.slow


def test_sweep_removes_incomplete_checkpoints_and_unfinished_uploads(s3_env, s3_server, tmp_path):
    loc = open_location(s3_env)
    client = s3_server.client()
    bucket, prefix = s3_env[5:].split("/", 1)
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"w" * 1000)
    publish_checkpoint(loc, "r", 1, src)  # complete: kept
    loc.write_bytes(b"half", "checkpoints", "r", "step-000002", "model.safetensors")  # killed before its marker
    uploads = [f"{prefix}/checkpoints/r/step-000003/model.safetensors", f"{prefix}/rollouts/run_id=r/step=2/part-0.parquet",
               f"{prefix}/staging/r/step=2/generated.parquet", f"{prefix}/rollouts/run_id=other/step=0/part-0.parquet"]
    for key in uploads:  # what a multipart upload cut by a SIGKILL leaves on the server
        up = client.create_multipart_upload(Bucket=bucket, Key=key)
        client.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 1024)

    assert sweep_checkpoint_temp(loc, "r") == 2  # the unmarked directory and one upload
    assert run_records.sweep_run_temp(loc, "r") == 2
    assert checkpoint_steps(loc, "r") == [1] and loc.list_dirs("checkpoints", "r") == ["step-000001"]
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == [uploads[-1]]  # another run's upload is not ours to abort


def test_heartbeat_round_trip_on_s3(s3_env):
    """A run never held has no holder at once (a missing key is no transient error to retry)."""
    loc = open_location(s3_env)
    t0 = time.monotonic()
    assert run_records.read_holder(loc, "r") is None
    assert time.monotonic() - t0 < 1.0
    run_records.hold(loc, "r")
    try:
        assert run_records.read_holder(loc, "r").is_me()
    finally:
        run_records.release("r")
