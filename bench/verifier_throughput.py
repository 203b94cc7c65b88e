"""Answers per second of the math verifier: the killable process pool vs in-process Math-Verify.

    .venv/bin/python bench/verifier_throughput.py [--n 2000] [--workers 2] [--repeat 1]

~2000 realistic completions: short reasoning then a boxed (or "final answer is") answer, a mix of
integers, fractions, decimals, roots, intervals and wrong answers, with a few golds repeated (as in
GRPO groups, where every sample of a prompt shares its gold). Each mode runs on a fresh verifier, so
Math-Verify's parse caches start cold in both; pool start-up is timed separately.

Wall time depends on what else the 2 cores are doing, so CPU seconds are reported too: the parent's
for in-process, the workers' (RUSAGE_CHILDREN, start-up subtracted) for the pool.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import time

from rlcadence.verifiers.math import MathVerifier


def make_answers(n: int, seed: int = 0, group: int = 8) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    completions, golds = [], []
    while len(completions) < n:
        a, b = rng.randint(1, 40), rng.randint(2, 40)
        kind = rng.choice(["int", "frac", "decimal", "sqrt", "interval", "neg"])
        if kind == "int":
            gold, right, wrong = str(a * b), str(a * b), str(a * b + rng.randint(1, 9))
        elif kind == "frac":
            gold, right, wrong = f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\dfrac{{{a + 1}}}{{{b}}}"
        elif kind == "decimal":
            gold, right, wrong = f"\\frac{{{a}}}{{4}}", f"{a / 4:g}", f"{a / 4 + 0.5:g}"
        elif kind == "sqrt":
            gold, right, wrong = f"{a}\\sqrt{{2}}", f"\\sqrt{{{2 * a * a}}}", f"{a}\\sqrt{{3}}"
        elif kind == "interval":
            gold, right, wrong = f"[{a}, {a + b})", f"[{a},{a + b})", f"({a}, {a + b}]"
        else:
            gold, right, wrong = f"-{a}", f"-{a}", f"{a}"
        for _ in range(group):  # one prompt's group of samples
            answer = right if rng.random() < 0.4 else wrong
            style = rng.random()
            if style < 0.7:
                text = f"Let me work through it step by step. ... so we get \\boxed{{{answer}}}."
            elif style < 0.9:
                text = f"Reasoning ... The final answer is ${answer}$."
            else:
                text = "I am not sure how to finish this."  # no answer: skipped before Math-Verify
            completions.append(text)
            golds.append(gold)
    return completions[:n], golds[:n]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_pool(workers: int, completions: list[str], golds: list[str], full: bool):
    """(start-up wall, batch wall, results, workers' CPU seconds); ``full=False`` only starts the pool."""
    cpu0 = children_cpu()
    pool = MathVerifier(workers=workers)
    t_start, _ = timed(pool.pool.start)  # spawn + import SymPy in every worker
    t_run, res = timed(lambda: pool(completions, golds)) if full else (0.0, None)
    pool.close()  # reaped children count in RUSAGE_CHILDREN
    return t_start, t_run, res, children_cpu() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="repeat each measurement; the best run is reported")
    args = ap.parse_args()
    completions, golds = make_answers(args.n)

    load = os.getloadavg()[0]
    rows = []
    for _ in range(args.repeat):
        inproc = MathVerifier(use_pool=False)
        cpu0 = time.process_time()
        t_in, res_in = timed(lambda v=inproc: v(completions, golds))
        cpu_in = time.process_time() - cpu0
        _, _, _, cpu_idle = run_pool(args.workers, [], [], full=False)
        t_start, t_pool, res_pool, cpu_pool = run_pool(args.workers, completions, golds, full=True)
        assert res_in == res_pool, "pool and in-process disagree"
        rows.append((t_in, cpu_in, t_pool, cpu_pool - cpu_idle, t_start))
    t_in, cpu_in, t_pool, cpu_pool, t_start = min(rows, key=lambda r: r[2])
    correct = sum(r.reward for r in res_in) / len(res_in)
    details = sorted({r.detail for r in res_in})

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"load average at start {load:.1f}"
    )
    print(f"answers: {args.n} (accuracy {correct:.2f}, details {details}), best of {args.repeat}")
    print(f"{'mode':<22}{'wall s':>8}{'answers/s':>11}{'CPU s':>8}{'answers/CPU-s':>15}")
    print(f"{'in-process':<22}{t_in:>8.2f}{args.n / t_in:>11.0f}{cpu_in:>8.2f}{args.n / cpu_in:>15.0f}")
    name = f"pool ({args.workers} workers)"
    print(f"{name:<22}{t_pool:>8.2f}{args.n / t_pool:>11.0f}{cpu_pool:>8.2f}{args.n / cpu_pool:>15.0f}")
    print(f"{'pool start-up (once)':<22}{t_start:>8.2f}")


if __name__ == "__main__":  # required: the pool spawns processes that re-import this module
    main()
