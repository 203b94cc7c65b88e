"""The run's step time with in-run compaction on vs off (issue 15's 2% target), through the real flow:

    .venv/bin/python bench/compaction_step_time.py [--steps 300] [--compact-every 100] [--pairs 2]

Runs the ``rlcadence-rl`` flow on the embedded tiny model's architecture (untrained: the same compute per
step) with ``compact_every=0`` and ``compact_every=N``, alternating (off, on, off, on, ...) so both see the
same machine. Step wall comes from the metrics table (``created_at`` of consecutive commits). Beside it,
what compaction cost the loop directly: ``time_compact_wait_s`` (a commit waiting for the previous merge)
and the merge's own wall and CPU seconds on its background thread (``time_compact_s``, ``time_compact_cpu_s``).
The run-end compaction (in ``finish-run``, after the last step) is timed separately: it is not a step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loop import machine, set_threads  # noqa: E402
from orchestration_overhead import sql, step_timings, untrained_model  # noqa: E402


def merge_step_excess(timed: list[tuple[int, float]], every: int, steps: int, eval_every: int,
                      checkpoint_every: int) -> list[float]:
    """Within one run: a merge submitted after step kN-1's commit runs beside step kN, whose commit waits
    for it, so step kN is the only step it can slow. Its excess over the same run's steps of the same kind
    (also right after an evaluation, whose artifacts are written beside them, and after a checkpoint) but
    without a merge is what each merge cost; no between-run noise enters."""
    if not every:
        return []
    evals = {s for s in range(steps) if (s + 1) % eval_every == 0 or s + 1 == steps}
    merged = set(range(every, steps, every))

    def kind(s: int) -> tuple[bool, bool]:
        return (s - 1 in evals, s % checkpoint_every == 0)

    walls = dict(timed)
    out = []
    for s in sorted(merged & walls.keys() - evals):
        same = [w for t, w in walls.items() if kind(t) == kind(s) and t not in merged and t not in evals]
        if same:
            out.append(walls[s] - statistics.median(same))
    return out


def one_run(model: str, steps: int, every: int, warmup: int, tag: str) -> dict[str, float]:
    from rlcadence.config import RLConfig
    from rlcadence.flows.rl import rl

    with tempfile.TemporaryDirectory(prefix="rlc-compact-time-") as tmp:
        run_id = f"compact-{every}-{tag}"
        cfg = RLConfig(run_id=run_id, model=model, store=tmp, steps=steps, eval_every=50, eval_size=100,
                       compact_every=every)
        t0 = time.perf_counter()
        rl(cfg)
        total = time.perf_counter() - t0
        timed = [(s, w) for s, w, _ in step_timings(tmp, run_id) if s >= warmup]
        walls = [w for _, w in timed]
        excess = merge_step_excess(timed, every, steps, cfg.eval_every, cfg.checkpoint_every)
        cost = sql(tmp, "SELECT sum(coalesce(time_compact_wait_s, 0)), sum(coalesce(time_compact_s, 0)), "
                        f"sum(coalesce(time_compact_cpu_s, 0)), count(time_compact_s) FROM metrics WHERE step >= {warmup}"
                   ) if every else [(0, 0, 0, 0)]  # no compaction: the columns are not written
        files = len(list(Path(tmp, "rollouts").rglob("*.parquet")))
    wait, merge, cpu, merges = (float(x or 0) for x in cost[0])
    return {"step_ms": 1000 * statistics.fmean(walls), "n": len(walls), "wait_ms": 1000 * wait / len(walls),
            "merge_ms": 1000 * merge / len(walls), "cpu_ms": 1000 * cpu / len(walls), "merges": merges,
            "total_s": total, "files": files,
            "excess_ms": 1000 * sum(excess) / len(walls), "excess_per_merge_ms": [round(1000 * e, 1) for e in excess]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--compact-every", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=2, help="off/on pairs, alternating")
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    set_threads(1)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    model = untrained_model()
    runs: dict[int, list[dict]] = {0: [], args.compact_every: []}
    for i in range(args.pairs):
        for every in (0, args.compact_every):
            runs[every].append(one_run(model, args.steps, every, args.warmup, str(i)))
            print(every, runs[every][-1], flush=True)
    print(machine())
    print(f"{args.steps} steps per run (steps < {args.warmup} left out), {args.pairs} runs per arm, alternating")
    print("| compact_every | step wall (ms), per run | mean | commit waited (ms/step) | merge wall (ms/step) "
          "| merge CPU (ms/step) | rollouts files at the end |")
    print("|---|---|---|---|---|---|---|")
    means = {}
    for every, rs in runs.items():
        means[every] = statistics.fmean(r["step_ms"] for r in rs)
        walls = ", ".join(f"{r['step_ms']:.1f}" for r in rs)
        print(f"| {every} | {walls} | {means[every]:.1f} | "
              f"{statistics.fmean(r['wait_ms'] for r in rs):.2f} | {statistics.fmean(r['merge_ms'] for r in rs):.2f} | "
              f"{statistics.fmean(r['cpu_ms'] for r in rs):.2f} | {rs[-1]['files']} |")
    on, off = means[args.compact_every], means[0]
    excess = statistics.fmean(r["excess_ms"] for r in runs[args.compact_every])
    print("within each compaction run: excess wall of the step beside each merge over the run's steps of the same "
          "kind without one (after an evaluation and a checkpoint), ms: "
          + "; ".join(str(r["excess_per_merge_ms"]) for r in runs[args.compact_every])
          + f" -> {excess:.2f} ms per step amortised = {100 * excess / off:.2f}% of the step (target <= 2%)")
    print(f"step time, compaction on / off: {on / off:.4f} ({100 * (on / off - 1):+.2f}%; target <= +2%)")


if __name__ == "__main__":
    main()
