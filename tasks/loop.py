"""One RL step as its five stages, and the two ways the flow runs them (``task_span``):

* ``stage``: each stage is its own Prefect task run (``generate[step 12]``), resumed by Prefect's result cache;
* ``segment``: ``segment_steps`` steps are one task run (``steps[10-19]``) that calls the stage functions
  directly. Each stage's result is recorded under the step's staging directory, so a crash or a retry
  resumes at the stage, from the store, as the cache does in ``stage`` mode: a step killed in train does not
  generate or score again. The commit deletes the records with the rest of the step's staging.

A task run costs Prefect about 60 ms here (state transitions, result persistence, events); five per step
were a fifth of the tiny model's step (bench/RESULTS.md section 8). A segment pays it once per ten steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from rlcadence.config import eval_due
from rlcadence.run_state import RunState
from rlcadence.tasks.commit import commit
from rlcadence.tasks.evaluate import evaluate
from rlcadence.tasks.generate import generate
from rlcadence.tasks.score import score
from rlcadence.tasks.train import train

STAGES = {"generate": generate, "score": score, "train": train, "evaluate": evaluate, "commit": commit}
RECORDED = ("generate", "score", "train", "evaluate")  # commit is the step's end: nothing after it to resume

StageCall = Callable[..., object]  # call(stage_name, run, step, *args) -> the stage's result


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    evaluated: dict[str, float] = field(default_factory=dict)


def run_step(run: RunState, step: int, call: StageCall) -> StepResult:
    """generate -> score -> train -> (evaluate) -> commit; the metrics row written by commit ends the step."""
    generated = call("generate", run, step)
    scored = call("score", run, step, generated)
    trained = call("train", run, step)
    evaluated = call("evaluate", run, step + 1) if eval_due(run.config, step + 1) else {}
    metrics = {**scored, **trained, **evaluated}
    call("commit", run, step, metrics)
    run.next_step = step + 1
    return StepResult(step, metrics, evaluated)


def task_call(tasks: dict[str, Callable]) -> StageCall:
    """``task_span: stage``: every stage through its Prefect task (with the run's result storage)."""
    return lambda name, *args: tasks[name](*args)


def _record_path(run: RunState, step: int, name: str) -> tuple[str, ...]:
    return ("staging", run.run_id, f"step={step}", f"{name}.json")


def recorded_call(look_up: int | None) -> StageCall:
    """``task_span: segment``: the stage functions without Prefect, each result recorded in the store.

    Only step ``look_up`` (the first one a segment runs: where a crash or a failed attempt stopped) can have
    records, so only its stages read the store first; later steps pay one small write per stage."""

    def call(name: str, run: RunState, step: int, *args):
        fn = STAGES[name].fn
        if name not in RECORDED:
            return fn(run, step, *args)
        loop_step = step - 1 if name == "evaluate" else step  # evaluate gets the policy step, t + 1
        path = _record_path(run, loop_step, name)
        if loop_step == look_up and run.loc.exists(*path):
            get_run_logger().info(f"{name}[step {loop_step}]: result from the store")
            return json.loads(run.loc.read_bytes(*path))
        value = fn(run, step, *args)
        run.loc.write_bytes(json.dumps(value).encode(), *path)
        return value

    return call


def segment_of(step: int, size: int, steps: int) -> tuple[int, int]:
    """The segment holding ``step``: [first, last], aligned to multiples of ``size`` and cut at ``steps``."""
    first = step - step % size
    return first, min(first + size, steps) - 1


def _segment_name(parameters: dict) -> str:
    return f"steps[{parameters['first']}-{parameters['last']}]"


@task(name="steps", task_run_name=_segment_name, cache_policy=NO_CACHE, persist_result=False,
      retries=2, retry_delay_seconds=1)
def segment(run: RunState, first: int, last: int, on_step: Callable[[StepResult], None]) -> int:
    """Steps ``first..last`` in one task run; a retry continues at the first step not committed."""
    start = max(first, run.next_step if run.next_step is not None else first)
    call = recorded_call(look_up=start)
    for step in range(start, last + 1):
        on_step(run_step(run, step, call))
    return last + 1
