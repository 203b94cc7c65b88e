"""Orchestration overhead of the RL flow: (step wall - stage compute) / step wall, per-stage tasks vs
one Prefect task per step, on the tiny model.

    .venv/bin/python bench/orchestration_overhead.py [--steps 200] [--model DIR]

Both variants run the same stage functions (``rlcadence.tasks.*.fn``) wrapped in a timer; "stage compute"
is the time inside them (generation, scoring, Parquet writes, training, checkpoints, evaluation), and
"step wall" the time between consecutive step ends seen by the flow. What is left is Prefect: task-run
creation, state transitions, result pickling and persistence, logging.

- per-stage: the shipped layout, ``@stage`` tasks (a crash resumes at the stage: completed stages of the
  step come back Cached);
- per-step: one task per step calling the five functions (a crash re-runs the whole step).
Each variant runs in its own Prefect temporary server; same seed, same config.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loop import machine, seed_model, set_threads  # noqa: E402

CLOCK: dict[str, float] = {"compute": 0.0}


def timed(fn):
    @functools.wraps(fn)  # Prefect reads the signature through __wrapped__
    def inner(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            CLOCK["compute"] += time.perf_counter() - t0

    return inner


def build_flows():
    from prefect import flow, task

    from rlcadence.run_state import RunState
    from rlcadence.tasks import commit, evaluate, generate, score, train
    from rlcadence.tasks.run import init_run
    from rlcadence.tasks.stage import stage

    fns = {name: timed(getattr(mod, name).fn) for name, mod in
           (("generate", generate), ("score", score), ("train", train), ("evaluate", evaluate), ("commit", commit))}
    staged = {name: stage(name)(fn) for name, fn in fns.items()}

    def loop(config, model_dir, step_call) -> list[tuple[float, float]]:
        samples = []
        with RunState(config, config.run_id) as run:
            start = init_run(run, Path(model_dir))
            last, c0 = time.perf_counter(), CLOCK["compute"]
            for step in range(start.start_step, config.steps):
                step_call(run, step)
                now = time.perf_counter()
                samples.append((now - last, CLOCK["compute"] - c0))
                last, c0 = now, CLOCK["compute"]
        return samples

    def stages_of_step(run, step, call):
        g = call["generate"](run, step)
        s = call["score"](run, step, g)
        t = call["train"](run, step)
        e = call["evaluate"](run, step + 1) if (step + 1) % run.config.eval_every == 0 else {}
        call["commit"](run, step, {**s, **t, **e})

    @flow(name="bench-per-stage", persist_result=True)
    def per_stage(config, model_dir):
        return loop(config, model_dir, lambda run, step: stages_of_step(run, step, staged))

    @task(name="step", persist_result=True, task_run_name="step[{step}]",
          cache_key_fn=lambda _ctx, p: f"bench-{p['run'].run_id}-step-{p['step']}")
    def one_step(run, step):
        stages_of_step(run, step, fns)

    @flow(name="bench-per-step", persist_result=True)
    def per_step(config, model_dir):
        return loop(config, model_dir, one_step)

    return {"per-stage": per_stage, "per-step": per_step}


def untrained_model() -> str:
    from rlcadence.models.tiny import TinyModelConfig, build_model, build_tokenizer, save_model

    out = Path(tempfile.mkdtemp(prefix="rlc-untrained-"))
    tok = build_tokenizer()
    save_model(build_model(TinyModelConfig(), tok, seed=0), tok, out)
    return str(out)


def summarise(name: str, samples: list[tuple[float, float]], skip: int) -> list[object]:
    body = samples[skip:]  # the first steps warm up the engine, allocator and server
    wall = sum(w for w, _ in body)
    compute = sum(c for _, c in body)
    return [name, len(body), f"{1000 * wall / len(body):.0f}", f"{1000 * compute / len(body):.0f}",
            f"{1000 * (wall - compute) / len(body):.0f}", f"{100 * (wall - compute) / wall:.1f}%"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--model", help="seed model dir (default: the embedded bootstrap model, cached)")
    ap.add_argument("--untrained", action="store_true", help="the embedded tiny model's architecture, untrained "
                    "(same compute per step, no bootstrap wait: overhead does not depend on the weights)")
    ap.add_argument("--variants", default="per-stage,per-step")
    args = ap.parse_args(argv)
    set_threads(1)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from rlcadence.config import RLConfig

    model = args.model or (untrained_model() if args.untrained else str(seed_model()))
    flows = build_flows()
    rows = []
    for name in args.variants.split(","):
        with tempfile.TemporaryDirectory(prefix="rlc-overhead-") as tmp:
            cfg = RLConfig(run_id=f"overhead-{name}", model=model, store=tmp, steps=args.steps, eval_every=50,
                           eval_size=100)
            samples = flows[name](cfg, model)
        rows.append(summarise(name, samples, args.warmup))
        print(rows[-1], flush=True)
    print(machine())
    print(f"{args.steps} steps (first {args.warmup} left out), M={cfg.prompts_per_step}, G={cfg.group_size}")
    print("| variant | steps | step wall (ms) | stage compute (ms) | orchestration (ms) | overhead |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
