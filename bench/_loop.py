"""The RL loop shared by the objective benchmarks, without Prefect: the flow's stage functions
(``rlcadence.tasks.*``, each called through ``.fn``) in a plain loop, so the timings are the work, not orchestration.

    generate -> score -> train -> [evaluate] -> commit        (as ``rlcadence.flows.rl``)

Each step returns the stage metrics (engine seconds ``time/generate_s``, update seconds ``time/train_s``,
rows back-propagated, ...) plus the wall seconds of each stage call (``wall/*``: Parquet, checkpoint and
diagnostics included). Runs write to a temporary store that is deleted at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from rlcadence.config import BootstrapConfig, RLConfig
from rlcadence.models.bootstrap import bootstrap_key, train_bootstrap
from rlcadence.run_state import RunState
from rlcadence.storage.query import query
from rlcadence.storage.stores import open_location
from rlcadence.tasks.commit import commit
from rlcadence.tasks.evaluate import evaluate
from rlcadence.tasks.generate import generate
from rlcadence.tasks.run import init_run
from rlcadence.tasks.score import score
from rlcadence.tasks.train import train

CACHE = Path(os.environ.get("RLCADENCE_BENCH_CACHE", Path.home() / ".cache" / "rlcadence" / "bench"))


def set_threads(n: int) -> None:
    """Intra-op threads. 1 by default: on a shared 2-core machine a second torch thread contends with
    other jobs (measured: 200 SFT steps of the tiny model took 72 s with 2 threads vs 6 s with 1)."""
    torch.set_num_threads(n)


def seed_model(cfg: BootstrapConfig | None = None, log=print) -> Path:
    """The embedded bootstrap model (SFT on 3-digit sums), trained once and cached outside the repo."""
    cfg = cfg or BootstrapConfig()
    out = CACHE / bootstrap_key(cfg)
    if not (out / "bootstrap_metrics.json").exists():
        log(f"training the bootstrap model ({cfg.steps} SFT steps) into {out} ...")
        tmp = out.with_name(out.name + ".tmp")
        metrics = train_bootstrap(cfg, tmp, log=lambda _m: None)
        (tmp / "bootstrap_metrics.json").write_text(json.dumps(metrics, indent=1))
        tmp.rename(out)
    metrics = json.loads((out / "bootstrap_metrics.json").read_text())
    log(f"seed model {out.name}: bootstrap held-out accuracy {metrics['bootstrap/heldout_accuracy']:.3f} "
        f"({metrics['bootstrap/seconds']:.0f} s to train)")
    return out


@contextlib.contextmanager
def temp_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="rlc-bench-") as tmp:
        yield str(Path(tmp) / "store")


class Run:
    """One experiment driven step by step (several can be interleaved, each with its own run id)."""

    def __init__(self, name: str, cfg: RLConfig, model_dir: Path):
        self.name, self.cfg = name, cfg
        self.run_id = f"bench-{name}-s{cfg.seed}".replace(" ", "_").replace("=", "")
        self.run = RunState(cfg, self.run_id)
        self.start = init_run(self.run, model_dir).start_step
        self.steps: list[dict[str, float]] = []
        self.evals: dict[int, dict[str, float]] = {}

    def step(self, step: int) -> dict[str, float]:
        run = self.run
        t0 = time.perf_counter()
        generated = generate.fn(run, step)
        t1 = time.perf_counter()
        metrics = score.fn(run, step, generated)
        t2 = time.perf_counter()
        metrics |= train.fn(run, step)
        t3 = time.perf_counter()
        metrics |= {"wall/generate_s": t1 - t0, "wall/score_s": t2 - t1, "wall/train_s": t3 - t2}
        commit.fn(run, step, metrics)
        self.steps.append(metrics)
        return metrics

    def evaluate(self, step: int) -> float:
        self.evals[step] = evaluate.fn(self.run, step)
        return self.evals[step]["eval/accuracy"]

    def total(self, key: str, skip: int = 0) -> float:
        return sum(m.get(key, 0.0) for m in self.steps[skip:])

    def mean(self, key: str, skip: int = 0) -> float:
        vals = [m[key] for m in self.steps[skip:] if key in m]
        return statistics.fmean(vals) if vals else float("nan")

    def rollout_stats(self) -> list[tuple[int, float, float]]:
        """(step, sample entropy estimate = mean -log p of the sampled tokens, mean completion tokens) from
        the rollouts table: the same figure for every algorithm (DPO logs no entropy of its own)."""
        return query(open_location(self.cfg.store), (
            "SELECT step, -sum(list_sum(token_logprobs)) / sum(len(token_logprobs)), avg(completion_tokens) "
            f"FROM rollouts WHERE run_id = '{self.run_id}' GROUP BY step ORDER BY step"))[1]

    def close(self) -> None:
        self.run.close()


def run_interleaved(runs: list[Run], steps: int, eval_every: int | None = None, log=print) -> None:
    """Step every run in turn (step t of each run before step t+1 of any), so that load from other jobs
    on a shared machine falls on all arms alike; evaluate after ``steps`` (and every ``eval_every``)."""
    for step in range(steps):
        for run in runs:
            run.step(step)
        done = step + 1
        if done == steps or (eval_every and done % eval_every == 0):
            for run in runs:
                run.evaluate(done)
            log(f"  step {done}/{steps}: " + ", ".join(f"{r.name} {r.evals[done]['eval/accuracy']:.3f}" for r in runs))


def add_run_args(ap, steps: int, prompts: int, group: int = 8) -> None:
    """The arguments every objective bench shares (run shape, evaluation size, torch threads)."""
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--prompts", type=int, default=prompts, help="M: prompts per optimizer step")
    ap.add_argument("--group", type=int, default=group, help="G: samples per prompt")
    ap.add_argument("--eval-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)


def start(script: str, args, argv: list[str] | None) -> None:
    """Set torch threads from ``args.threads`` and print the machine and the exact command (for RESULTS.md)."""
    set_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"command: .venv/bin/python bench/{script} {' '.join(sys.argv[1:] if argv is None else argv)}")


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), CUDA {'yes' if torch.cuda.is_available() else 'no'}, "
            f"load average {load:.1f} at start")


def mean_sd(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (what RESULTS files paste)."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
