"""What the Prefect UI gets from a run: flow/task-run names, tags, and the run's artifacts by key."""

from __future__ import annotations

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName

from rlcadence.config import RLConfig
from rlcadence.flows.rl import rl
from tests.integration.helpers import small_config

pytestmark = pytest.mark.slow


def _artifacts(client, key: str):
    return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_run_is_named_tagged_and_has_artifacts(prefect_server, seed_model, store, tmp_path, capsys):
    cfg = RLConfig.model_validate(small_config(seed_model, store, run_id="ui-Run_1", sync_every=2, steps=3,
                                                     loggers=["tensorboard"]))
    rl(cfg)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["grpo s=2 · ui-Run_1"])))
        assert len(runs) == 1, "the flow run is named after the run"
        fr = runs[0]
        assert {"algorithm:grpo", "cadence:semi-online", "sync:2", "engine:hf"} <= set(fr.tags)
        names = {t.name for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [fr.id]}))}
        assert names == {"start-run", "evaluate[step 0]", "steps[0-2]", "finish-run"}, names
        task_tags = {tag for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [fr.id]}))
                     for tag in t.tags}
        assert task_tags == set(), "tags stay on the flow run: each tagged task run costs a concurrency API call"

        summary = _artifacts(client, "ui-run-1-summary")
        assert summary and all(a.flow_run_id == fr.id for a in summary)
        text = summary[0].data  # newest first
        assert "# grpo s=2 · ui-Run_1" in text and "semi-online" in text and "steps** 3/3" in text
        assert "| `sync_every` | `2` | `1` |" in text, "config diff against the defaults"
        assert "## Wall time per stage" in text and "| generate |" in text
        assert f"--store {store}" in text and "FROM metrics WHERE run_id = 'ui-Run_1'" in text

        table = _artifacts(client, "ui-run-1-metrics")[0]
        assert [r["step"] for r in __import__("json").loads(table.data)] == [1, 2]  # eval_every=2 and the last step
        progress = _artifacts(client, "ui-run-1-progress")[0]
        assert progress.data == 100.0 and progress.description.startswith("step 3/3 · reward ")
        plots = _artifacts(client, "ui-run-1-plots")[0]
        assert plots.data.startswith("![ui-Run_1 curves](data:image/png;base64,iVBOR")

    # loggers: [tensorboard] -> event files of the same metrics beside the store's tables
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(f"{store}/tensorboard/ui-Run_1")
    events.Reload()
    assert [e.step for e in events.Scalars("reward/mean")] == [0, 1, 2]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [1, 2]

    # the report reads the store alone: two runs of this store on the same axes, HTML + PNGs (in process:
    # the CLI's entry point, without a second interpreter importing torch)
    from rlcadence.cli import main

    rl(RLConfig.model_validate(small_config(seed_model, store, run_id="ui-off", sync_every="offline", steps=1)))
    out = tmp_path / "report"
    assert main(["report", "ui-Run_1", "ui-off", "--store", store, "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "grpo s=2 · ui-Run_1" in page and "grpo s=offline · ui-off" in page and "2 runs compared" in page
    assert page.count("data:image/png;base64,") == 7  # overview + six panels, inlined: the page stands alone
    for name in ("metrics", "reward_mean", "eval_accuracy", "rollout_mean_length", "train_entropy", "kl_mean",
                 "sparsity_unchanged_vs_last_sync"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert main(["report", "no-such-run", "--store", store, "--out", str(out)]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
