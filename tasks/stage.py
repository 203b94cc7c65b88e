"""What every stage shares: persisted results cached by (run, step, stage), and retries.

A retried or resumed flow run gets its completed stages back as Cached and re-runs the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task
from prefect.context import TaskRunContext


def stage_key(name: str) -> Callable[[TaskRunContext, dict], str]:
    def key(_ctx: TaskRunContext, params: dict) -> str:
        step = params.get("step", params.get("policy_step"))
        return f"rlcadence-{params['run'].run_id}-{name}-{step}"

    return key


def stage(name: str):
    """``@stage("generate")``: a Prefect task named ``name`` whose result is cached per (run, step)."""
    return task(name=name, cache_key_fn=stage_key(name), persist_result=True, retries=2, retry_delay_seconds=1)
