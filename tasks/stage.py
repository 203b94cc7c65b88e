"""What every stage shares: persisted results cached by (run, step, stage), and retries.

A retried or resumed flow run gets its completed stages back as Cached and re-runs the rest.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from prefect import task
from prefect.context import TaskRunContext

from rlcadence import faults


def stage_key(name: str) -> Callable[[TaskRunContext, dict], str]:
    def key(_ctx: TaskRunContext, params: dict) -> str:
        step = params.get("step", params.get("policy_step"))
        return f"rlcadence-{params['run'].run_id}-{name}-{step}"

    return key


def stage(name: str):
    """``@stage("generate")``: a Prefect task named ``name`` whose result is cached per (run, step).

    An exception leaving the stage carries ``rlcadence_stage`` and ``rlcadence_step``, so the flow can mark
    the run failed saying where (attributes survive the pickling of a persisted failure)."""
    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def located(*args, **kwargs):
            bound = signature.bind_partial(*args, **kwargs).arguments
            step = bound.get("step", bound.get("policy_step"))
            try:
                faults.maybe_fail(name, step)
                return fn(*args, **kwargs)
            except Exception as err:
                if not hasattr(err, "rlcadence_stage"):
                    err.rlcadence_stage, err.rlcadence_step = name, step
                raise

        return task(name=name, cache_key_fn=stage_key(name), persist_result=True, retries=2,
                    retry_delay_seconds=1)(located)

    return decorate
