"""Thin Prefect wrappers: retries and result caching keyed by (run, step, stage) live here, the work in
``stages.py``. A retried or resumed flow run gets completed stages back as Cached and re-runs the rest.
"""

from __future__ import annotations

from prefect import task
from prefect.context import TaskRunContext

from rlcadence.tasks import stages


def _stage_key(stage: str):
    def key(_ctx: TaskRunContext, params: dict) -> str:
        step = params.get("step", params.get("policy_step"))
        return f"rlcadence-{params['run_id']}-{stage}-{step}"

    return key


_common = dict(persist_result=True, retries=2, retry_delay_seconds=1)

generate_rollouts = task(stages.generate, name="generate", cache_key_fn=_stage_key("generate"), **_common)
score_rollouts = task(stages.score, name="score", cache_key_fn=_stage_key("score"), **_common)
train_policy = task(stages.train, name="train", cache_key_fn=_stage_key("train"), **_common)
evaluate_policy = task(stages.evaluate, name="evaluate", cache_key_fn=_stage_key("evaluate"), **_common)
record_step = task(stages.record_step, name="record", cache_key_fn=_stage_key("record"), **_common)
