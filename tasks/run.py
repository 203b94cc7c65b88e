"""The run's first and last stages: checkpoint 0 and the resume point; the final model and status.

Neither is cached: a retried or resumed flow run must re-read where the run stands.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from rlcadence.config import RLConfig
from rlcadence.environments.datasets import rejected_to_arrow
from rlcadence.run_state import RunState
from rlcadence.storage import run_records, tables
from rlcadence.storage.checkpoints import checkpoint_steps, sweep_checkpoint_temp
from rlcadence.storage.compaction import compact_run, recover
from rlcadence.tasks.crashed import mark_crashed
from rlcadence.trainer.checkpoint import TrainerState


@dataclass(frozen=True)
class RunStart:
    run_id: str
    start_step: int  # first step still to run (== steps when the run is complete)


def new_run_id(cfg: RLConfig) -> str:
    return run_records.new_run_id(cfg.algorithm)


def stable_run_id(config: RLConfig) -> str:
    """The run id survives a Prefect retry of the same flow run (same flow-run id -> same run)."""
    if config.run_id:
        return config.run_id
    fr = runtime.flow_run.id
    return f"{config.algorithm}-{str(fr)[:8]}" if fr else new_run_id(config)


def init_run(run: RunState, model_dir: Path) -> RunStart:
    """Create checkpoint 0 from the seed model (once), and find where the run continues.

    A step is done when its metrics row is committed (the last write of a step), so resume starts at the
    step after the last committed one. Its policy is rebuilt from the latest full checkpoint at or before it
    plus a replay of the committed steps in between (:meth:`RunState.policy_at`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loc, run_id = run.loc, run.run_id
    run_records.sweep_run_temp(loc, run_id)  # rollouts, metrics, rejected, runs, staging, final model
    sweep_checkpoint_temp(loc, run_id)
    recover(loc, run_id)  # a compaction the kill interrupted is finished before anything reads the steps
    if 0 not in checkpoint_steps(loc, run_id):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=run.dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        run.save_checkpoint(model, tokenizer, TrainerState(step=0, data_cursor=0, generator_version=0, ref_version=0),
                            wait=True)
    envs = run.environments(AutoTokenizer.from_pretrained(model_dir))
    rejected = [r for e in envs for r in e.rejected]
    if rejected:
        table = rejected_to_arrow(rejected, run_id)
        loc.write_bytes(tables.table_to_parquet_bytes(table), "rejected", f"run_id={run_id}", "part-0.parquet")
    done = tables.committed_steps(loc, "metrics", run_id)
    start = max(done) + 1 if done else 0
    if not [s for s in checkpoint_steps(loc, run_id) if s <= start]:
        raise RuntimeError(f"run {run_id}: no checkpoint at or before step {start} in {loc.uri}; cannot resume")
    for name in loc.list_dirs("staging", run_id):  # staging of committed steps (a kill inside commit)
        if name.startswith("step=") and int(name.removeprefix("step=")) < start:
            loc.delete_dir("staging", run_id, name)
    return RunStart(run_id, start)


def export_final_model(run: RunState, step: int) -> str:
    """Publish the final policy (HF format) under ``models/<run_id>`` for downstream use."""
    policy = run.policy_at(step)
    run.writer.wait()  # the last checkpoint is published before the run says it is complete
    with tempfile.TemporaryDirectory(prefix="rlc-final-") as tmp:
        policy.model.save_pretrained(tmp)
        policy.tokenizer.save_pretrained(tmp)
        return run.loc.put_dir(Path(tmp), "models", run.run_id)


def _params(run: RunState, **extra) -> dict:
    return run.config.model_dump(mode="json") | {"run_id": run.run_id, **extra}


@task(name="start-run", task_run_name="start-run", retries=1, cache_policy=NO_CACHE)
def start_run(run: RunState, model_dir: str) -> RunStart:
    """Take the run over (refused while another live process holds it), mark what a killed process of
    it left Running in Prefect as Crashed, then record it running and find where it continues."""
    run_records.hold(run.loc, run.run_id)
    mark_crashed(run.run_id, current_flow_run_id=str(runtime.flow_run.id or "") or None,
                 current_task_run_id=str(runtime.task_run.id or "") or None, say=get_run_logger().info)
    tables.write_run_status(run.loc, run.run_id, "running", _params(run, model_dir=model_dir),
                            flow_run_id=str(runtime.flow_run.id or ""))
    return init_run(run, Path(model_dir))


@task(name="finish-run", task_run_name="finish-run", cache_policy=NO_CACHE)
def finish_run(run: RunState, summary: dict) -> dict:
    summary["final_model"] = export_final_model(run, run.config.steps)
    if run.config.compact_every:
        run.compactor.wait()  # the last in-run merge, then everything into large files
        compact_run(run.loc, run.run_id, full=True)
    extra = {k: v for k, v in summary.items() if k != "run_id"}
    tables.write_run_status(run.loc, run.run_id, "completed", _params(run), flow_run_id=str(runtime.flow_run.id or ""), **extra)
    run_records.release(run.run_id)
    return summary


def failure_row(err: BaseException) -> dict:
    """Where and why a run failed: the stage and step (set by tasks.stage) and the error's first line."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return {
        "failed_stage": getattr(err, "rlcadence_stage", "flow"),
        "failed_step": getattr(err, "rlcadence_step", None),
        "error": f"{type(err).__name__}: {first}"[:500],
    }


@contextmanager
def failure_recorded(run: RunState) -> Iterator[None]:
    """Around a flow body: an exception marks the run ``failed`` (stage, step, error), then propagates."""
    try:
        yield
    except Exception as err:
        tables.write_run_status(run.loc, run.run_id, "failed", _params(run),
                                flow_run_id=str(runtime.flow_run.id or ""), **failure_row(err))
        raise
