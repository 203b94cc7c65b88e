"""The standalone evaluation stage: any model directory or stored run checkpoint on eval sets, rows into the
same ``evals`` table (and a summary row into ``metrics``) as a run's own evaluation, under its own id.

:func:`plan_eval` resolves everything that can be refused (target, run, step, eval-set names) without a
model; :func:`check_eval` also reads every eval-set file with the target's tokenizer; both run before the
flow starts, so bad input stops before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from rlcadence.config import ArithmeticConfig, RLConfig
from rlcadence.environments.mix import Environment, open_environments
from rlcadence.environments.spec import EnvironmentSpec
from rlcadence.eval_config import EvalConfig, EvalTargetError, Target, default_eval_id, parse_target, selected
from rlcadence.storage import run_records, tables
from rlcadence.storage.checkpoints import checkpoint_steps
from rlcadence.storage.location import StoreLocation
from rlcadence.storage.stores import open_location
from rlcadence.tasks.commit import metrics_columns


@dataclass(frozen=True)
class EvalPlan:
    target: Target
    run_config: RLConfig | None  # the run's parameters (a run target)
    environments: list[EnvironmentSpec]  # only the selected eval sets
    seed: int
    eval_id: str


def _run_config(loc: StoreLocation, cfg: EvalConfig, run_id: str) -> RLConfig:
    params = run_records.read_params(loc, run_id)
    params.pop("model_dir", None)
    update = {"run_id": run_id, "store": cfg.store, "s3": cfg.s3} | ({"device": cfg.device} if cfg.device else {})
    return RLConfig.model_validate(params | update)


def _run_target(loc: StoreLocation, run_id: str, step: int | None) -> Target:
    steps = checkpoint_steps(loc, run_id)
    committed = tables.committed_steps(loc, "metrics", run_id)
    last = max(committed) + 1 if committed else 0  # policy versions that exist: 0 .. last
    if step is None:
        step = max(steps, default=0)
    if step > last:
        raise EvalTargetError(f"run {run_id} has {last} committed steps in {loc.uri}: no policy after {step} updates")
    return Target(name=run_id, run_id=run_id, step=step)


def plan_eval(cfg: EvalConfig) -> EvalPlan:
    """What ``cfg`` evaluates, refused here (one line) when the target, step or a set name is unknown."""
    from rlcadence.models.source import check_model_dir, resolve_model_dir

    # a local store that does not exist holds no run, and is not created by a lookup (nor by a refusal)
    exists = cfg.store.startswith("s3://") or Path(cfg.store).expanduser().is_dir()
    loc = open_location(cfg.store, cfg.s3) if exists else None
    name, step = parse_target(cfg.model)
    path = Path(cfg.model).expanduser()
    run_config = None
    if not path.is_dir() and loc is not None and run_records.status_files(loc, name):
        target = _run_target(loc, name, step)
        run_config = _run_config(loc, cfg, name)
    elif step is not None and not path.is_dir():
        raise EvalTargetError(f"no run {name!r} in store {cfg.store} (and no model directory {cfg.model})")
    else:
        model_dir = check_model_dir(resolve_model_dir(cfg.model))  # a missing one: ModelNotFound, named
        target = Target(name=model_dir.name, model_dir=model_dir)
    envs = cfg.environments if cfg.environments is not None else (run_config.environments if run_config else [])
    envs = selected(envs, cfg.sets)
    seed = cfg.seed if cfg.seed is not None else (run_config.seed if run_config else 0)
    return EvalPlan(target, run_config, envs, seed, cfg.eval_id or default_eval_id(target, envs, seed))


def open_eval_environments(plan: EvalPlan, tokenizer, model_dir: Path, device: str) -> list[Environment]:
    """The plan's environments with their eval sets read and checked (no training rows), as the run's are:
    each set's prompt limit is the model's context minus the set's completion budget."""
    from rlcadence.preflight import max_positions

    arith = plan.run_config.bootstrap.environment if plan.run_config else ArithmeticConfig()
    seed = plan.run_config.seed if plan.run_config else 0
    return open_environments(plan.environments, seed, arith.split_seed, arith.digits, arith.n_heldout, tokenizer,
                             device=device, positions=max_positions(model_dir), training_rows=False)


def _seed_dir(plan: EvalPlan) -> Path:
    """A directory with the target's config and tokenizer: the model's, or the run's checkpoint 0."""
    if plan.target.model_dir is not None:
        return plan.target.model_dir
    from rlcadence.run_state import RunState

    with RunState(plan.run_config, plan.target.run_id) as run:
        return run.checkpoint_dir(0)


def check_eval(cfg: EvalConfig) -> EvalPlan:
    """:func:`plan_eval`, then every eval-set file read with the target's tokenizer (a missing gold column,
    a bad or over-long row in fail mode stop here, naming the file)."""
    from transformers import AutoTokenizer

    plan = plan_eval(cfg)
    seed_dir = _seed_dir(plan)
    for env in open_eval_environments(plan, AutoTokenizer.from_pretrained(seed_dir), seed_dir, "cpu"):
        env.close()
    return plan


def _load(plan: EvalPlan, cfg: EvalConfig):
    """(model, tokenizer, device, seed dir, run state or None) of the target."""
    if plan.target.model_dir is None:
        from rlcadence.run_state import RunState

        run = RunState(plan.run_config, plan.target.run_id)
        model, tokenizer = run.eval_model(plan.target.step)
        return model, tokenizer, run.device, run.checkpoint_dir(0), run
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlcadence.devices import resolve_device

    device = resolve_device(cfg.device or "auto")
    model = AutoModelForCausalLM.from_pretrained(plan.target.model_dir, dtype=torch.float32).to(device)
    return model, AutoTokenizer.from_pretrained(plan.target.model_dir), device, plan.target.model_dir, None


def evaluate_target(cfg: EvalConfig) -> dict:
    """Evaluate the target on every selected eval set; write its ``evals`` rows and ``metrics`` summary
    under ``plan.eval_id`` at the target's step. Returns the summary (with eval_id, step, model)."""
    from rlcadence.engines.hf import engine_from_model
    from rlcadence.evaluation import evaluate_sets

    plan = plan_eval(cfg)
    model, tokenizer, device, seed_dir, run = _load(plan, cfg)
    envs = []
    try:
        envs = open_eval_environments(plan, tokenizer, seed_dir, str(device))
        engine = engine_from_model(model.eval(), tokenizer, plan.target.step)
        result = evaluate_sets(engine, envs, tokenizer, run_seed=plan.seed, step=plan.target.step,
                               model=plan.target.label, run_id=plan.eval_id)
    finally:
        for env in envs:
            env.close()
        if run is not None:
            run.close()
    loc = open_location(cfg.store, cfg.s3)
    tables.write_evals(loc, plan.eval_id, plan.target.step, result.rows)
    sets = ",".join(s.name for e in plan.environments for s in e.eval_sets)
    tables.write_metrics(loc, plan.eval_id, plan.target.step,
                         {"model": plan.target.label, "eval_sets": sets, **metrics_columns(result.metrics)})
    return {"eval_id": plan.eval_id, "step": plan.target.step, "model": plan.target.label, **result.metrics}


eval_model = task(name="eval-model", task_run_name="eval-model", cache_policy=NO_CACHE, retries=1)(evaluate_target)
