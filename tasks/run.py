"""The run's first and last stages: checkpoint 0 and the resume point; the final model and status.

Neither is cached: a retried or resumed flow run must re-read where the run stands.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import runtime, task
from prefect.cache_policies import NO_CACHE

from rlcadence.config import RLConfig
from rlcadence.environments.datasets import rejected_to_arrow
from rlcadence.run_state import RunState
from rlcadence.storage import tables
from rlcadence.storage.checkpoints import checkpoint_steps
from rlcadence.trainer.checkpoint import TrainerState


@dataclass(frozen=True)
class RunStart:
    run_id: str
    start_step: int  # first step still to run (== steps when the run is complete)


def new_run_id(cfg: RLConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{cfg.algorithm}-{stamp}-{random.Random().getrandbits(24):06x}"


def stable_run_id(config: RLConfig) -> str:
    """The run id survives a Prefect retry of the same flow run (same flow-run id -> same run)."""
    if config.run_id:
        return config.run_id
    fr = runtime.flow_run.id
    return f"{config.algorithm}-{str(fr)[:8]}" if fr else new_run_id(config)


def init_run(run: RunState, model_dir: Path) -> RunStart:
    """Create checkpoint 0 from the seed model (once), and find where the run continues.

    A step is done when its metrics row is committed (the last write of a step), so resume starts at the
    step after the last committed one; checkpoint ``start_step`` exists by construction.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loc, run_id = run.loc, run.run_id
    loc.sweep_temp_files("rollouts", f"run_id={run_id}")
    loc.sweep_temp_files("metrics", f"run_id={run_id}")
    if 0 not in checkpoint_steps(loc, run_id):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=run.dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        run.save_checkpoint(model, tokenizer, TrainerState(step=0, data_cursor=0, generator_version=0, ref_version=0))
    envs = run.environments(AutoTokenizer.from_pretrained(model_dir))
    rejected = [r for e in envs for r in e.rejected]
    if rejected:
        table = rejected_to_arrow(rejected, run_id)
        loc.write_bytes(tables.table_to_parquet_bytes(table), "rejected", f"run_id={run_id}", "part-0.parquet")
    done = tables.committed_steps(loc, "metrics", run_id)
    start = max(done) + 1 if done else 0
    if start not in checkpoint_steps(loc, run_id):
        raise RuntimeError(f"run {run_id}: step {start} has no checkpoint in {loc.uri}; cannot resume")
    return RunStart(run_id, start)


def export_final_model(run: RunState, step: int) -> str:
    """Publish the final policy (HF format) under ``models/<run_id>`` for downstream use."""
    policy = run.policy_at(step)
    with tempfile.TemporaryDirectory(prefix="rlc-final-") as tmp:
        policy.model.save_pretrained(tmp)
        policy.tokenizer.save_pretrained(tmp)
        return run.loc.put_dir(Path(tmp), "models", run.run_id)


def _params(run: RunState, **extra) -> dict:
    return run.config.model_dump(mode="json") | {"run_id": run.run_id, **extra}


@task(name="start-run", task_run_name="start-run", retries=1, cache_policy=NO_CACHE)
def start_run(run: RunState, model_dir: str) -> RunStart:
    tables.write_run_status(run.loc, run.run_id, "running", _params(run, model_dir=model_dir),
                            flow_run_id=str(runtime.flow_run.id or ""))
    return init_run(run, Path(model_dir))


@task(name="finish-run", task_run_name="finish-run", cache_policy=NO_CACHE)
def finish_run(run: RunState, summary: dict) -> dict:
    summary["final_model"] = export_final_model(run, run.config.steps)
    extra = {k: v for k, v in summary.items() if k != "run_id"}
    tables.write_run_status(run.loc, run.run_id, "completed", _params(run), flow_run_id=str(runtime.flow_run.id or ""), **extra)
    return summary
