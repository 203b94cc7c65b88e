"""What every stage shares: persisted results cached by (run, step, stage), retries, and a task-run name
that says the stage and step (``generate[step 12]``), so the UI's run graph reads as the loop.

A retried or resumed flow run gets its completed stages back as Cached and re-runs the rest.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable

from prefect import task
from prefect.context import TaskRunContext

from rlcadence import faults


class _QuietCompletions(logging.Filter):
    """Drops Prefect's "Finished in state Completed()" line: five per step, 80% of a run's log, and each one
    an API write. Failures, retries and Cached results are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and str(record.msg).startswith("Finished in state Completed"))


QUIET_COMPLETIONS = _QuietCompletions()
logging.getLogger("prefect.task_runs").addFilter(QUIET_COMPLETIONS)


def _step_of(params: dict) -> int | None:
    return params.get("step", params.get("policy_step"))


def stage_key(name: str) -> Callable[[TaskRunContext, dict], str]:
    def key(_ctx: TaskRunContext, params: dict) -> str:
        return f"rlcadence-{params['run'].run_id}-{name}-{_step_of(params)}"

    return key


def stage_run_name(name: str) -> Callable[..., str]:
    """Task-run name ``<stage>[step <t>]`` (Prefect passes the call's parameters)."""

    def run_name(parameters: dict) -> str:
        return f"{name}[step {_step_of(parameters)}]"

    return run_name


def stage(name: str):
    """``@stage("generate")``: a Prefect task named ``name`` whose result is cached per (run, step).

    ``fn`` itself (``generate.fn``) is the same stage without Prefect: what a segment task calls.
    The seconds spent inside a stage add to ``run.stage_seconds``; the commit stage records them per step.

    An exception leaving the stage carries ``rlcadence_stage`` and ``rlcadence_step``, so the flow can mark
    the run failed saying where (attributes survive the pickling of a persisted failure)."""
    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def located(*args, **kwargs):
            bound = signature.bind_partial(*args, **kwargs).arguments
            step = bound.get("step", bound.get("policy_step"))
            t0 = time.perf_counter()
            try:
                faults.maybe_fail(name, step)
                return fn(*args, **kwargs)
            except Exception as err:
                if not hasattr(err, "rlcadence_stage"):
                    err.rlcadence_stage, err.rlcadence_step = name, step
                raise
            finally:
                run = bound.get("run")
                if run is not None:  # the time inside stages, against which orchestration is measured
                    run.stage_seconds += time.perf_counter() - t0

        return task(name=name, task_run_name=stage_run_name(name), cache_key_fn=stage_key(name),
                    persist_result=True, retries=2, retry_delay_seconds=1)(located)

    return decorate
