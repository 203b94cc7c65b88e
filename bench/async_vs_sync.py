"""Asynchronous vs synchronous RL on the 2 cores here: generation in one process (the run's Ray actor),
training in another (the flow), the real ``rlcadence-rl`` flow on a real local Ray cluster and Prefect server.

    OMP_NUM_THREADS=1 .venv/bin/python bench/async_vs_sync.py [--steps 40] [--prompts 64] [--group 8]

For ``max_staleness`` 0 (synchronous), 1 and 2, same seed and config: wall seconds per step (between two
commits, ``created_at`` of consecutive metric rows, the first ``--warmup`` steps and the last, which
evaluates, left out; medians over ``--repeats`` interleaved runs of each variant, so that all three see the same
spread of a shared machine's load) and held-out accuracy after the same number of steps (per repeat).

    ideal ratio    = (gen + train) / max(gen, train)    gen, train: median seconds of the synchronous run
                                                        (the actor's sampling, the update)
    measured ratio = sync step wall / async step wall    (median over steps)
    efficiency     = (measured - 1) / (ideal - 1)        the share of the possible overlap obtained
                     and measured / ideal                the figure the issue asks for (target >= 80%)

The rest of a step (scoring on Ray, Parquet, checkpoint, commit, Prefect) is not overlapped, so it bounds
the measured ratio below the ideal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


from _loop import machine, seed_model, set_threads, table  # noqa: E402

BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_naming(marker: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(proc.name))
            except OSError:
                pass
    return out


def start_ray(temp_dir: Path) -> str:
    port = _port()
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                    "--num-gpus", "0", "--port", str(port), "--temp-dir", str(temp_dir), "--include-dashboard",
                    "false", "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    return f"127.0.0.1:{port}"


def stop_ray(marker: str, within_s: float = 10.0) -> None:
    """SIGTERM the cluster's processes by PID, then SIGKILL what is left (the GCS server ignores SIGTERM)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_naming(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + within_s
        while _pids_naming(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


def start_prefect(home: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("prefect server did not start")


def sql(store: str, text: str) -> list[tuple]:
    from rlcadence.storage.query import query
    from rlcadence.storage.stores import open_location

    return query(open_location(store), text)[1]


def run_variant(k: int, rep: int, args, model: str, address: str, root: Path) -> dict:
    from rlcadence.config import RLConfig
    from rlcadence.flows.rl import rl

    store, run_id = str(root / f"k{k}-r{rep}"), f"async-k{k}-r{rep}"
    cfg = RLConfig(run_id=run_id, model=model, store=store, steps=args.steps, prompts_per_step=args.prompts,
                   group_size=args.group, eval_every=args.steps, eval_size=args.eval_size, compact_every=0,
                   runner="ray", ray_address=address, max_staleness=k, seed=args.seed)
    t0 = time.perf_counter()
    summary = rl(cfg)
    total = time.perf_counter() - t0
    rows = sql(store, "SELECT step, epoch(created_at), time_generate_s, time_train_s FROM metrics ORDER BY step")
    walls = [(s, t - tp) for (_, tp, _, _), (s, t, _, _) in zip(rows, rows[1:], strict=False)]
    body = [w for s, w in walls if args.warmup <= s < args.steps - 1]
    lag = sql(store, "SELECT max(step - policy_version) FROM rollouts")[0][0]
    return {"k": k, "step_s": body, "gen_s": [r[2] for r in rows[1:]], "train_s": [r[3] for r in rows[1:]],
            "acc": summary["final_accuracy"], "acc0": summary["initial_accuracy"], "max_lag": lag, "total_s": total}


def merged(runs: list[dict]) -> dict:
    """One variant over its repeats: medians over every measured step, accuracies per repeat."""
    pool = lambda key: [x for r in runs for x in r[key]]  # noqa: E731
    return {"k": runs[0]["k"], "step_s": statistics.median(pool("step_s")), "gen_s": statistics.median(pool("gen_s")),
            "train_s": statistics.median(pool("train_s")), "acc": "/".join(f"{r['acc']:.3f}" for r in runs),
            "acc0": runs[0]["acc0"], "max_lag": max(r["max_lag"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--eval-size", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant, interleaved (shared machines)")
    args = ap.parse_args()
    set_threads(1)
    print(machine())
    model = str(seed_model())
    root = Path(tempfile.mkdtemp(prefix="rlc-async-bench-"))
    ray_dir = root / "ray"
    address = start_ray(ray_dir)
    server, url = start_prefect(root / "prefect-home")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = url  # the Ray workers (through ray_cluster.connect)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):  # the flow: never Prefect's ephemeral server
            runs = [run_variant(k, rep, args, model, address, root)  # interleaved: each variant sees the
                    for rep in range(args.repeats) for k in (0, 1, 2)]    # same spread of the machine's load
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # the flows' last log lines, while the server still answers
    finally:
        server.terminate()
        stop_ray(str(ray_dir))
    results = [merged([r for r in runs if r["k"] == k]) for k in (0, 1, 2)]
    sync = results[0]
    ideal = (sync["gen_s"] + sync["train_s"]) / max(sync["gen_s"], sync["train_s"])
    rows = []
    for r in results:
        measured = sync["step_s"] / r["step_s"]
        eff = (measured - 1) / (ideal - 1) if r["k"] else float("nan")
        rows.append([r["k"], r["step_s"], r["gen_s"], r["train_s"], measured, ideal, measured / ideal, eff,
                     r["max_lag"], r["acc0"], r["acc"]])
    print(f"\n{args.steps} steps x {args.repeats} repeats, M={args.prompts} x G={args.group}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(table(["max_staleness", "step s (median)", "gen s", "train s", "measured ratio", "ideal ratio",
                 "measured / ideal", "overlap obtained", "max step - policy_version", "held-out before",
                 "held-out after"], rows))


if __name__ == "__main__":
    main()
