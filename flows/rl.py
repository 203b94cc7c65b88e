"""The RL flow. One flow run = one experiment (paper A's loop, with DASH's batching knobs):

    for step t = start .. T-1:
        rollouts_t  <- generate(generator_t, prompts_t, G)        # generator synced every s steps
        rewards_t   <- score(rollouts_t); A_t <- advantages       # committed to the rollouts table
        theta_t+1   <- train(theta_t, rollouts_t)                 # checkpoint t+1
        every E:       evaluate(theta_t+1)
        commit metrics_t                                          # the step's commit point

Steps run ten to a Prefect task run by default (``task_span``, tasks/loop.py)."""

from __future__ import annotations

from prefect import flow, get_run_logger, runtime

from rlcadence.config import RLConfig
from rlcadence.flows.bootstrap import bootstrap
from rlcadence.models.bootstrap import bootstrap_metrics
from rlcadence.preflight import check_before_work
from rlcadence.run_state import RunState
from rlcadence.storage.results import result_storage_for
from rlcadence.tasks.artifacts import RunBoard
from rlcadence.tasks.loop import STAGES, StepResult, run_step, segment, segment_of, task_call
from rlcadence.tasks.run import failure_recorded, finish_run, stable_run_id, start_run
from rlcadence.tasks.ui import flow_run_name, label_flow_run

__all__ = ["rl", "seed_model", "stable_run_id"]


def _fmt(evaluated: dict) -> str:
    acc = evaluated.get("eval/accuracy")
    return "n/a (no held-out split)" if acc is None else f"{acc:.3f}"


def seed_model(config: RLConfig) -> str:
    """The seed model's directory, after every check that needs it (Ray cluster and generator_url reachable, model
    dir, dataset rows and lengths): all fail naming the address or path, before the run row or any checkpoint is written."""
    model_dir = check_before_work(config)
    if model_dir is not None:
        return str(model_dir)
    return bootstrap(config.bootstrap, config.store, config.s3)


@flow(name="rlcadence-rl", flow_run_name=flow_run_name, log_prints=True, persist_result=True)
def rl(config: RLConfig = RLConfig()) -> dict:
    """Run (or continue) one RL experiment; returns held-out accuracy before and after."""
    log = get_run_logger()
    run_id = stable_run_id(config)
    model_dir = seed_model(config)
    results = result_storage_for(config.store, config.s3)
    tasks = {name: t.with_options(result_storage=results) for name, t in STAGES.items()}
    ev = tasks["evaluate"]
    # The run's tags go on the flow run only (label_flow_run): a tagged task run costs Prefect a concurrency-slot
    # API call, which was the largest part of the per-step orchestration overhead (bench/RESULTS.md section 8).
    with RunState(config, run_id) as run, failure_recorded(run):
        start = start_run(run, model_dir)
        label_flow_run(config, run_id, resumed=start.start_step > 0 or runtime.flow_run.run_count > 1)
        before = ev(run, 0)
        log.info(f"run {run_id}: start at step {start.start_step}/{config.steps}; held-out accuracy {_fmt(before)}")
        board = RunBoard(run, start.start_step, before)
        latest = {"evaluated": before}

        def step_done(done: StepResult) -> None:
            board.step_done(done.step, done.metrics)
            latest["evaluated"] = done.evaluated or latest["evaluated"]
            log.info(f"step {done.step}: reward {done.metrics['reward/mean']:.3f}"
                     + (f", held-out {_fmt(done.evaluated)}" if done.evaluated else ""))

        run.next_step = step = start.start_step
        while step < config.steps:
            if config.task_span == "stage":
                step_done(run_step(run, step, task_call(tasks)))
                step += 1
            else:
                first, last = segment_of(step, config.segment_steps, config.steps)
                step = segment(run, first, last, step_done)
        after = latest["evaluated"]
        if start.start_step >= config.steps:
            after = ev(run, config.steps)
        summary = {
            "run_id": run_id,
            "bootstrap_accuracy": bootstrap_metrics(model_dir).get("bootstrap/heldout_accuracy"),
            "initial_accuracy": before.get("eval/accuracy"),
            "final_accuracy": after.get("eval/accuracy"),
            "steps": config.steps,
        }
        summary = finish_run(run, summary)
        board.close()
        return summary
