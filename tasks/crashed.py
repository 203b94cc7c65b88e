"""Mark in Prefect what a killed process of a run left behind: its flow runs and task runs, Crashed.

A SIGKILL leaves the flow run and the task run it was in ``Running`` forever (nothing in the process
survives to report). One mechanism serves every way back:

* a resumed run (``rlcadence resume``, or a new flow run with the same ``run_id``) and a retried flow
  run (``prefect flow-run retry``) call :func:`mark_crashed` from ``start-run``, once they hold the run;
* ``rlcadence runs`` calls :func:`reap_dead_runs`, which finds runs whose process is gone (by their
  heartbeat, :mod:`rlcadence.storage.run_records`) and marks them, so ``prefect flow-run retry`` then
  accepts their flow run.

Flow runs are matched to a run by their parameters (``config.run_id``), or by the flow-run id a
run without an explicit id is named after (``<algorithm>-<flow run id[:8]>``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from uuid import UUID

from rlcadence.storage import run_records, tables
from rlcadence.storage.location import StoreLocation

FLOW_NAME = "rlcadence-rl"


def _run_id_of(flow_run) -> str | None:
    cfg = (flow_run.parameters or {}).get("config") or {}
    if not isinstance(cfg, dict):
        return None
    if cfg.get("run_id"):
        return str(cfg["run_id"])
    return f"{cfg.get('algorithm', 'grpo')}-{str(flow_run.id)[:8]}"


def mark_crashed(run_id: str, *, current_flow_run_id: str | None = None, current_task_run_id: str | None = None,
                 started_before: datetime | None = None, say: Callable[[str], object] = print) -> list[str]:
    """Set Crashed on every flow run of ``run_id`` still Running/Pending (but the current one), their
    sub-flow runs, and every task run of them left Running/Pending. In the current flow run (a retry),
    only task runs created before its present attempt began are touched. ``started_before``: only flow
    runs created before then (a dead holder's last beat), so a run just being started is left alone.

    Returns the ids of the flow runs that were found with leftovers.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    live = [StateType.RUNNING, StateType.PENDING]
    msg = f"rlcadence: the process driving run {run_id} was killed; marked Crashed when the run was taken over"
    with get_client(sync_client=True) as client:
        by_flow = FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))
        flow_runs = {fr.id: fr for fr in client.read_flow_runs(
            flow_filter=by_flow, flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live))))}
        stuck = client.read_task_runs(flow_filter=by_flow, task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=live))))
        missing = list({tr.flow_run_id for tr in stuck if tr.flow_run_id and tr.flow_run_id not in flow_runs})
        if missing:
            flow_runs |= {fr.id: fr for fr in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=missing)))}
        current = UUID(current_flow_run_id) if current_flow_run_id else None
        mine = {i: fr for i, fr in flow_runs.items() if _run_id_of(fr) == run_id
                and (started_before is None or i == current or fr.created is None or fr.created <= started_before)}
        crashed = [i for i, fr in mine.items() if i != current and fr.state and fr.state.type in live]
        if crashed:  # sub-flow runs (bootstrap) of a killed flow run died with it
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=crashed),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live))))
            crashed += [c.id for c in children]
            stuck += client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[c.id for c in children])),
                                           task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=live))))
        for i in crashed:
            client.set_flow_run_state(i, Crashed(message=msg), force=True)
        attempt_start = mine[current].state.timestamp if current in mine and mine[current].state else None
        owners = set(mine) | set(crashed)
        n_tasks = 0
        for tr in stuck:
            if tr.flow_run_id not in owners or str(tr.id) == current_task_run_id:
                continue
            if tr.flow_run_id == current and (attempt_start is None or tr.created is None or tr.created >= attempt_start):
                continue  # this attempt's own task runs
            client.set_task_run_state(tr.id, Crashed(message=msg), force=True)
            n_tasks += 1
    found = sorted({str(i) for i in crashed} | {str(tr.flow_run_id) for tr in stuck if tr.flow_run_id in owners
                                                 and str(tr.id) != current_task_run_id})
    if crashed or n_tasks:
        say(f"run {run_id}: marked {len(crashed)} flow run(s) and {n_tasks} task run(s) of a killed process Crashed")
    return found


def reap_dead_runs(loc: StoreLocation, say: Callable[[str], object] = print) -> list[str]:
    """Find runs of ``loc`` whose status says running but whose process is gone; record them as
    ``crashed`` in the store and mark their flow and task runs Crashed in Prefect. Returns their ids.

    Prefect is contacted only when such a run exists.
    """
    dead = []
    for run_id in run_records.run_ids(loc):
        is_dead, holder = run_records.is_dead(loc, run_id)
        if not is_dead:
            continue
        params = tables.read_run_params(loc, run_id)
        tables.write_run_status(loc, run_id, "crashed", params)
        # everything the dead process created, it created before the beat it did not live to write
        before = datetime.fromtimestamp(holder.beat_at + 2 * holder.interval).astimezone() if holder else None
        flow_runs = mark_crashed(run_id, started_before=before, say=say)
        hint = "".join(f"; or: prefect flow-run retry {f} --entrypoint rlcadence.flows.rl:rl" for f in flow_runs[-1:])
        say(f"run {run_id}: its process is gone; marked crashed. Continue it: rlcadence resume {run_id} --store {loc.uri}{hint}")
        dead.append(run_id)
    return dead
