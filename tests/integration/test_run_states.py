"""A run that fails is marked `failed` in the runs table, with the stage, the step and the error's first line."""

from __future__ import annotations

import pytest

from rlcadence.cli import main
from rlcadence.config import RLConfig
from rlcadence.faults import InjectedFailure
from rlcadence.flows.rl import rl
from tests.integration.helpers import small_config, sql

pytestmark = pytest.mark.slow


def test_a_failed_run_is_marked_failed_where_it_failed(prefect_server, seed_model, store, capsys, monkeypatch):
    monkeypatch.setenv("RLCADENCE_FAIL_AT", "train:1")  # an ordinary exception in train, step 1, every retry
    cfg = RLConfig.model_validate(small_config(seed_model, store, run_id="doomed", steps=3, eval_every=10))
    with pytest.raises(InjectedFailure):
        rl(cfg)
    [(status, stage, step, error)] = sql(store, "SELECT status, failed_stage, failed_step, error FROM runs")
    assert (status, stage, step) == ("failed", "train", 1)
    assert error == "InjectedFailure: injected failure in train at step 1"  # the first line only
    assert [s for (s,) in sql(store, "SELECT step FROM metrics ORDER BY step")] == [0]

    assert main(["runs", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "doomed" in out and "failed" in out and stage in out
