"""Stage 5, commit: the step's metrics row (its commit point), then staging and old checkpoints go, and
every ``compact_every`` steps the committed step files are compacted."""

from __future__ import annotations

from rlcadence.run_state import RunState
from rlcadence.storage import tables
from rlcadence.storage.checkpoints import prune_checkpoints
from rlcadence.storage.compaction import compact_run
from rlcadence.tasks.stage import stage


def metrics_columns(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as SQL-friendly columns ("eval/accuracy" -> "eval_accuracy")."""
    return {k.replace("/", "_"): float(v) for k, v in metrics.items()}


@stage("commit")
def commit(run: RunState, step: int, metrics: dict[str, float]) -> str:
    """Commit the step (its metrics row is the commit point), then drop staging and old checkpoints."""
    cfg, loc = run.config, run.loc
    envs = ",".join(e.name for e in cfg.environments)
    uri = tables.write_metrics(loc, run.run_id, step, {"environments": envs, **metrics_columns(metrics)})
    loc.delete_dir("staging", run.run_id, f"step={step}")
    if run.policy is not None:
        s = run.policy.state
        prune_checkpoints(loc, run.run_id, cfg.keep_checkpoints, {0, s.generator_version, s.ref_version})
    if cfg.compact_every and (step + 1) % cfg.compact_every == 0:
        compact_run(loc, run.run_id, full=False)  # after the commit point: only committed steps are merged
    return uri
