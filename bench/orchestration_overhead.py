"""Orchestration overhead of the RL flow, per-stage task runs vs segments of steps (``task_span``), on the
tiny model, measured from the run's own metrics table:

    .venv/bin/python bench/orchestration_overhead.py [--steps 200] [--model DIR | --untrained]

Both variants run the real ``rlcadence-rl`` flow on Prefect's temporary server, same seed and config.
Step wall is the time between consecutive metrics rows (``created_at``: each step's commit point);
stage compute is ``time_stages_s``, the seconds spent inside the stage functions (generate, score, train,
evaluate, and the previous step's commit). What is left is Prefect: task-run creation, state transitions,
result persistence, events and logging, plus the flow's own bookkeeping (progress artifact, log lines).

    overhead = sum(step wall - stage compute) / sum(step wall)      over the steps after --warmup

- ``stage``: one task run per stage and step (``generate[step 12]``), resumed through Prefect's cache;
- ``segment``: ``segment_steps`` steps per task run (``steps[10-19]``), stage results recorded in the store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loop import machine, seed_model, set_threads  # noqa: E402


def untrained_model() -> str:
    from rlcadence.models.tiny import TinyModelConfig, build_model, build_tokenizer, save_model

    out = Path(tempfile.mkdtemp(prefix="rlc-untrained-"))
    tok = build_tokenizer()
    save_model(build_model(TinyModelConfig(), tok, seed=0), tok, out)
    return str(out)


def sql(store: str, text: str) -> list[tuple]:
    from rlcadence.storage.query import query
    from rlcadence.storage.stores import open_location

    return query(open_location(store), text)[1]


def step_timings(store: str, run_id: str) -> list[tuple[int, float, float]]:
    """(step, wall s, stage compute s) per step from the metrics table, from the second step on."""
    rows = sql(store, f"SELECT step, epoch(created_at), time_stages_s FROM metrics WHERE run_id = '{run_id}' "
                      "ORDER BY step")
    return [(s, t - t_prev, c) for (_, t_prev, _), (s, t, c) in zip(rows, rows[1:], strict=False)]


def task_run_count(flow_run_id: str) -> int:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    by_flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    count, page = 0, 200  # the API's page limit
    with get_client(sync_client=True) as client:
        while True:
            got = len(client.read_task_runs(flow_run_filter=by_flow_run, limit=page, offset=count))
            count += got
            if got < page:
                return count


def run_variant(span: str, model: str, steps: int, warmup: int, segment_steps: int) -> list[object]:
    from rlcadence.config import RLConfig
    from rlcadence.flows.rl import rl

    with tempfile.TemporaryDirectory(prefix="rlc-overhead-") as tmp:
        run_id = f"overhead-{span}"
        cfg = RLConfig(run_id=run_id, model=model, store=tmp, steps=steps, eval_every=50, eval_size=100,
                       task_span=span, segment_steps=segment_steps)
        rl(cfg)
        body = [t for t in step_timings(tmp, run_id) if t[0] >= warmup]
        flow_run_id = sql(tmp, f"SELECT flow_run_id FROM runs WHERE run_id = '{run_id}'")[0][0]
        tasks = task_run_count(flow_run_id)
    wall = sum(w for _, w, _ in body)
    compute = sum(c for _, _, c in body)
    n = len(body)
    return [span, n, tasks, f"{1000 * wall / n:.0f}", f"{1000 * compute / n:.0f}", f"{1000 * (wall - compute) / n:.1f}",
            f"{100 * (wall - compute) / wall:.1f}%"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out (engine, allocator, server warm-up)")
    ap.add_argument("--segment-steps", type=int, default=10)
    ap.add_argument("--model", help="seed model dir (default: the embedded bootstrap model, cached)")
    ap.add_argument("--untrained", action="store_true", help="the embedded tiny model's architecture, untrained "
                    "(same compute per step, no bootstrap wait: overhead does not depend on the weights)")
    ap.add_argument("--variants", default="stage,segment")
    args = ap.parse_args(argv)
    set_threads(1)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    model = args.model or (untrained_model() if args.untrained else str(seed_model()))
    rows = []
    for span in args.variants.split(","):
        rows.append(run_variant(span, model, args.steps, args.warmup, args.segment_steps))
        print(rows[-1], flush=True)
    print(machine())
    print(f"{args.steps} steps (steps < {args.warmup} left out), default shapes (M=32, G=8), eval every 50 steps "
          f"(100 problems), segment_steps={args.segment_steps}")
    print("| task_span | steps | task runs | step wall (ms) | stage compute (ms) | orchestration (ms) | overhead |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
