"""The RL flow. One flow run = one experiment (paper A's loop, with DASH's batching knobs):

    for step t = start .. T-1:
        rollouts_t  <- generate(generator_t, prompts_t, G)        # generator synced every s steps
        rewards_t   <- score(rollouts_t); A_t <- advantages       # committed to the rollouts table
        theta_t+1   <- train(theta_t, rollouts_t)                 # checkpoint t+1
        every E:       evaluate(theta_t+1)
        commit metrics_t                                          # the step's commit point
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from rlcadence.config import RLConfig
from rlcadence.flows.bootstrap import bootstrap, bootstrap_metrics
from rlcadence.storage import tables
from rlcadence.storage.prefect_results import result_storage_for
from rlcadence.tasks import prefect_tasks as T
from rlcadence.tasks import stages
from rlcadence.tasks.model_source import resolve_model_dir


@task(name="start-run", retries=1, cache_policy=NO_CACHE)  # always re-read the resume point
def start_run(config: RLConfig, run_id: str, model_dir: str) -> stages.RunStart:
    loc = config.store_location()
    params = config.model_dump(mode="json") | {"run_id": run_id, "model_dir": model_dir}
    tables.write_run_status(loc, run_id, "running", params, flow_run_id=str(runtime.flow_run.id or ""))
    return stages.init_run(config, run_id, Path(model_dir))


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run(config: RLConfig, run_id: str, summary: dict) -> dict:
    loc = config.store_location()
    params = config.model_dump(mode="json") | {"run_id": run_id}
    summary["final_model"] = stages.export_final_model(config, run_id, config.steps)
    extra = {k: v for k, v in summary.items() if k != "run_id"}
    tables.write_run_status(loc, run_id, "completed", params, flow_run_id=str(runtime.flow_run.id or ""), **extra)
    return summary


def _fmt(evaluated: dict) -> str:
    acc = evaluated.get("eval/accuracy")
    return "n/a (no held-out split)" if acc is None else f"{acc:.3f}"


def seed_model(config: RLConfig) -> str:
    if config.model is not None:
        return str(resolve_model_dir(config.model))  # fails naming the path before any work
    return bootstrap(config.bootstrap, config.store, config.s3)


def stable_run_id(config: RLConfig) -> str:
    """The run id survives a Prefect retry of the same flow run (same flow-run id -> same run)."""
    if config.run_id:
        return config.run_id
    fr = runtime.flow_run.id
    return f"{config.algorithm}-{str(fr)[:8]}" if fr else stages.new_run_id(config)


@flow(name="rlcadence-rl", log_prints=True, persist_result=True)
def rl(config: RLConfig = RLConfig()) -> dict:
    """Run (or continue) one RL experiment; returns held-out accuracy before and after."""
    log = get_run_logger()
    run_id = stable_run_id(config)
    model_dir = seed_model(config)
    results = result_storage_for(config.store, config.s3)
    gen, sc, tr, ev, rec = (
        t.with_options(result_storage=results)
        for t in (T.generate_rollouts, T.score_rollouts, T.train_policy, T.evaluate_policy, T.record_step)
    )
    run = start_run(config, run_id, model_dir)
    before = ev(config, run_id, 0)
    log.info(f"run {run_id}: start at step {run.start_step}/{config.steps}; held-out accuracy {_fmt(before)}")
    after = before
    for step in range(run.start_step, config.steps):
        generated = gen(config, run_id, step)
        scored = sc(config, run_id, step, generated)
        trained = tr(config, run_id, step)
        last = step + 1 == config.steps
        evaluated = ev(config, run_id, step + 1) if (step + 1) % config.eval_every == 0 or last else {}
        rec(config, run_id, step, {**scored, **trained, **evaluated})
        after = evaluated or after
        log.info(f"step {step}: reward {scored['reward/mean']:.3f}" + (f", held-out {_fmt(evaluated)}" if evaluated else ""))
    if run.start_step >= config.steps:
        after = ev(config, run_id, config.steps)
    summary = {
        "run_id": run_id,
        "bootstrap_accuracy": bootstrap_metrics(model_dir).get("bootstrap/heldout_accuracy"),
        "initial_accuracy": before.get("eval/accuracy"),
        "final_accuracy": after.get("eval/accuracy"),
        "steps": config.steps,
    }
    return finish_run(config, run_id, summary)
