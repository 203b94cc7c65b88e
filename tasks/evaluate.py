"""Stage 4, evaluate: held-out accuracy of the trainer's weights, per environment, and the eval sets."""

from __future__ import annotations

from rlcadence.engines.hf import engine_from_model
from rlcadence.environments.mix import Environment
from rlcadence.evaluation import evaluate_sets, heldout_accuracy
from rlcadence.prompts import encode_prompts
from rlcadence.run_state import RunState
from rlcadence.storage import tables
from rlcadence.tasks.stage import stage


def _as_verifier(env: Environment, prompts: list[str]):
    """Held-out scoring through the environment (its verifier or scorer) with the Verifier signature."""
    return lambda completions, golds: env.score(prompts[: len(completions)], completions, golds)


def run_model_name(run_id: str, step: int) -> str:
    """How the evals table names a run's weights after ``step`` updates (both evaluation paths)."""
    return f"run:{run_id}@{step}"


@stage("evaluate")
def evaluate(run: RunState, policy_step: int) -> dict[str, float]:
    """Greedy held-out accuracy of the trainer's weights after ``policy_step`` updates, then every eval set
    (its samples written to the ``evals`` table for ``policy_step``, its summary returned for metrics)."""
    cfg = run.config
    policy = run.policy_at(policy_step)
    engine = engine_from_model(policy.model.eval(), policy.tokenizer, policy_step)
    out: dict[str, float] = {}
    envs = run.environments(policy.tokenizer)
    for i, env in enumerate(envs):
        heldout = env.heldout(cfg.eval_size)
        if not heldout:
            continue
        scorer = _as_verifier(env, [p.prompt for p in heldout])
        ids = encode_prompts(policy.tokenizer, [p.prompt for p in heldout], [p.chat for p in heldout])
        m = heldout_accuracy(engine, ids, [p.gold for p in heldout], scorer, cfg.eval_sampling)
        if i == 0:
            out |= m  # the first environment's figures are the run's headline eval/accuracy
        if len(cfg.environments) > 1:
            out[f"eval/accuracy_{env.spec.name}"] = m["eval/accuracy"]
    sets = evaluate_sets(engine, envs, policy.tokenizer, run_seed=cfg.seed, step=policy_step,
                         model=run_model_name(run.run_id, policy_step), run_id=run.run_id)
    if sets.rows:
        tables.write_evals(run.loc, run.run_id, policy_step, sets.rows)
    return out | sets.metrics
