"""Stage 5, commit: the step's metrics row (its commit point), then staging and old checkpoints go, and
every ``compact_every`` steps the committed step files are compacted on a background thread.

The compaction overlaps the next step's generate, score and train, and the next commit waits for it before
writing its metrics row: a step is never committed while an earlier merge is in flight, so a kill inside a
merge leaves the same committed steps as when it ran inline (``time/compact_wait_s`` is what the step waited).
"""

from __future__ import annotations

from rlcadence.run_state import RunState
from rlcadence.storage import tables
from rlcadence.storage.checkpoints import checkpoint_steps, prune_checkpoints
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
    # this step's generate..evaluate and the previous commit: step wall minus this is orchestration
    metrics = {**metrics, "time/stages_s": run.stage_seconds}
    run.stage_seconds = 0.0
    if cfg.compact_every:
        metrics = {**metrics, **compaction_metrics(run)}
    uri = tables.write_metrics(loc, run.run_id, step, {"environments": envs, **metrics_columns(metrics)})
    loc.delete_dir("staging", run.run_id, f"step={step}")
    if run.policy is not None:
        s = run.policy.state
        pinned = {0, s.generator_version, s.ref_version}
        if cfg.max_staleness:  # a resume rebuilds the generator version of step - k from a checkpoint before it
            pinned.add(max((c for c in checkpoint_steps(loc, run.run_id) if c <= s.step - cfg.max_staleness), default=0))
        prune_checkpoints(loc, run.run_id, cfg.keep_checkpoints, pinned)
    if cfg.compact_every and (step + 1) % cfg.compact_every == 0:
        # after the commit point: only committed steps are merged
        run.compactor.submit(lambda: compact_run(loc, run.run_id, full=False))
    return uri


def compaction_metrics(run: RunState) -> dict[str, float]:
    """Wait for the previous in-run compaction; the wait, and that merge's wall and CPU seconds once."""
    out = {"time/compact_wait_s": run.compactor.wait()}
    if run.compactor.last_write_s is not None:
        out |= {"time/compact_s": run.compactor.last_write_s, "time/compact_cpu_s": run.compactor.last_cpu_s}
        run.compactor.last_write_s = run.compactor.last_cpu_s = None
    return out
