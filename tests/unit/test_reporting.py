"""The run's summary, names and tags as plain functions (no Prefect server)."""

from __future__ import annotations

from rlcadence.config import RLConfig
from rlcadence.reporting.summary import config_diff, flatten, stage_seconds, summary_markdown
from rlcadence.reporting.terminal import TerminalProgress
from rlcadence.tasks.artifacts import artifact_key, table_rows
from rlcadence.tasks.stage import stage_run_name
from rlcadence.tasks.ui import cadence, run_name, run_tags


def test_cadence_names_follow_paper_a():
    assert [cadence(1), cadence(10), cadence("offline")] == ["online", "semi-online", "offline"]


def test_names_and_tags():
    cfg = RLConfig(algorithm="dpo", sync_every=10)
    assert run_name(cfg, "r1", resumed=False) == "dpo s=10 · r1"
    assert run_name(cfg, "r1", resumed=True) == "resume · r1"
    assert run_tags(cfg) == ["algorithm:dpo", "cadence:semi-online", "sync:10", "engine:hf"]
    assert stage_run_name("generate")(parameters={"run": None, "step": 12}) == "generate[step 12]"
    assert stage_run_name("evaluate")(parameters={"run": None, "policy_step": 0}) == "evaluate[step 0]"


def test_artifact_keys_are_prefect_slugs():
    assert artifact_key("GRPO_run.1", "summary") == "grpo-run-1-summary"


def test_config_diff_lists_only_changed_leaves():
    diff = config_diff(RLConfig(steps=40, optimizer={"lr": 0.5}), RLConfig())
    assert diff == [("optimizer.lr", 0.5, RLConfig().optimizer.lr), ("steps", 40, 800)]
    assert flatten({"a": {"b": 1, "c": {}}, "d": [1]}) == {"a.b": 1, "a.c": {}, "d": [1]}


def test_stage_seconds_and_summary():
    rows = [{"step": 0, "time_generate_s": 1.0, "time_train_s": 2.0},
            {"step": 1, "time_generate_s": 0.5, "time_train_s": 2.0, "time_eval_s": 0.5}]
    assert stage_seconds(rows) == {"generate": 1.5, "train": 4.0, "evaluate": 0.5}
    md = summary_markdown(run_id="r", label="grpo s=1", cadence="online", diff=[], before=0.5, after=0.625,
                          steps_done=2, steps=4, resumed_from=1, rows=rows, step_wall_s=3.0, store="/s")
    assert "| gain | +12.5 points |" in md
    assert "resumed at step 1** (1 steps committed before)" in md
    assert "| train | 4.0 | 67% |" in md  # 4.0 of 6.0 s
    assert "all defaults" in md


def test_table_keeps_eval_steps_and_the_last():
    cfg = RLConfig(steps=5, eval_every=2)
    rows = [{"step": s, "reward_mean": s / 10} for s in range(5)]
    assert [r["step"] for r in table_rows(rows, cfg)] == [1, 3, 4]


def test_schedules_are_slugged_by_their_cadence():
    from pathlib import Path

    import yaml
    from prefect.cli.deploy._models import DeploymentConfig

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    rl = next(d for d in doc["deployments"] if d["name"] == "rl")
    DeploymentConfig.model_validate(rl)  # what `prefect deploy` accepts (no unknown schedule keys)
    seen = []
    for sched in rl["schedules"]:
        name = cadence(sched["parameters"]["config"]["sync_every"])
        assert sched["slug"].startswith(name), (sched["slug"], name)
        assert sched["slug"] in rl["description"]
        seen.append(name)
    assert seen == ["online", "semi-online", "offline"]


def test_terminal_progress_only_on_a_tty():
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = io.StringIO()
    bar = TerminalProgress(10, 0, "grpo s=1 · r", stream=plain)
    bar.update(3, 0.5, 0.25)
    bar.close()
    assert not bar.active and plain.getvalue() == ""  # logs and workers get the flow's plain lines
    tty = Tty()
    bar = TerminalProgress(10, 2, "grpo s=1 · r", stream=tty)
    assert bar.active
    bar.update(5, 0.5, 0.25)
    bar.close()
    out = tty.getvalue()
    assert "5/10" in out and "reward 0.500" in out and "held-out 25.0%" in out


def test_tensorboard_logger_writes_readable_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlcadence.reporting.tensorboard import TensorBoardLogger

    tb = TensorBoardLogger(tmp_path / "tb")
    tb.log(0, {"reward/mean": 0.25, "eval/accuracy": 0.5})
    tb.log(1, {"reward/mean": 0.75})
    tb.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(0, 0.25), (1, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(0, 0.5)]


def test_terminal_progress_total_can_move():
    """The bootstrap's end moves when its validation target is hit: the bar follows it."""
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = TerminalProgress(2000, 0, "bootstrap SFT", stream=tty)
    bar.show(400, "loss 0.700 · validation 31.0%", total=450)
    bar.close()
    out = tty.getvalue()
    assert "400/450" in out and "validation 31.0%" in out


def test_completed_task_lines_are_dropped_but_failures_kept():
    import logging

    from rlcadence.tasks.stage import QUIET_COMPLETIONS

    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, __file__, 1, msg, None, None)

    assert not QUIET_COMPLETIONS.filter(record(logging.INFO, "Finished in state Completed()"))
    assert QUIET_COMPLETIONS.filter(record(logging.INFO, "Finished in state Cached(type=COMPLETED)"))
    assert QUIET_COMPLETIONS.filter(record(logging.ERROR, "Finished in state Failed('boom')"))
    assert QUIET_COMPLETIONS in logging.getLogger("prefect.task_runs").filters
