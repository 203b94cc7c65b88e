"""The store at a real run's scale: step files as written, compacted, one file; and DuckLake beside it.

    .venv/bin/python bench/store_scale.py                         # 10,000 steps x 256 rows, local + SeaweedFS
    .venv/bin/python bench/store_scale.py --steps 500 --no-s3      # a quick look

Writes a run's store the way a run writes it: per step, the rollouts table through
``tables.write_step_table`` (what the score stage calls) and the metrics row through the commit stage's
own function (``tasks.commit.commit.fn`` on a real ``RunState``: metrics row, staging cleanup and, with
``compact_every``, the in-run compaction). Two stores are written step by step, interleaved, so both see
the same load: ``compact_every=0`` (as written) and ``compact_every=N`` (compaction on); the second then
gets the run-end compaction ``finish_run`` does. A third layout puts every row in one file.

Rows look like the main job's (3-digit addition, 32 prompts x 8 samples, <= 6 completion tokens) and carry
every column of ``ROLLOUT_SCHEMA``; metrics rows carry the run's ~40 metric columns (evaluation ones every
50 steps). Queries: the three of ``bench/store_vs_jsonl.py`` plus one step's rows, through rlcadence's
read-only views (``storage.query.connect``; "open" is the time to build the views: listing and footers).

``--ducklake-steps K`` (default: the same steps, local only) writes the same rows into a DuckLake table
pair (catalog in a DuckDB file, data as Parquet), one transaction per step for both tables, then merges
its files with ``ducklake_merge_adjacent_files`` and times the same queries.
"""

from __future__ import annotations

import argparse
import glob
import os
import secrets
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_vs_jsonl import QUERIES, same_answers  # noqa: E402  (the three analysis queries)

from rlcadence.config import RLConfig  # noqa: E402
from rlcadence.storage import compaction, layout, tables  # noqa: E402
from rlcadence.storage.query import connect  # noqa: E402
from rlcadence.storage.s3 import S3Settings  # noqa: E402
from rlcadence.storage.seaweed import SeaweedServer  # noqa: E402

RUN = "scale-0001"
M, G = 32, 8
METRICS = ["reward/mean", "reward/accuracy", "reward/missing_fraction", "rollout/mean_length",
           "rollout/zero_advantage_group_fraction", "rollout/kept_fraction", "rollout/generator_lag",
           "time/generate_s", "time/score_s", "time/train_s", "train/loss", "train/grad_norm", "train/entropy",
           "train/lr", "train/rows_backpropagated", "train/adam_grad_cosine", "kl/mean", "clip/fraction",
           "ratio/max", "ratio/mean", "ratio/min", "memory/optimizer_state_bytes", "memory/peak_rss_bytes",
           "sparsity/changed_vs_initial", "sparsity/parameters", "sparsity/unchanged_vs_initial",
           "sparsity/unchanged_vs_last_sync", "checkpoint/bytes", "time/checkpoint_s"]
EVAL = ["eval/accuracy", "eval/mean_length", "eval/n", "time/eval_s"]
ALL_QUERIES = QUERIES | {"one step's rows": "SELECT count(*), avg(reward) FROM {t} WHERE step = {mid}"}


class MainJobRows:
    """Deterministic rollouts shaped like the main job's: 32 addition prompts x 8 samples per step."""

    def __init__(self, steps: int, rows_per_step: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.steps, self.rows = steps, rows_per_step
        self.t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def step(self, step: int) -> pa.Table:
        rng, n = self.rng, self.rows
        groups = n // G
        a, b = rng.integers(100, 1000, groups), rng.integers(100, 1000, groups)
        p = 0.35 + 0.25 * step / max(self.steps - 1, 1)
        reward = (rng.random((groups, G)) < p).astype(np.float64)
        adv = ((reward - reward.mean(1, keepdims=True)) / (reward.std(1, keepdims=True) + 1e-6)).ravel()
        rows = []
        for i in range(n):
            g = i // G
            prompt, gold = f"{a[g]}+{b[g]}=", str(a[g] + b[g])
            r = float(reward.ravel()[i])
            completion = gold if r else str(int(rng.integers(100, 2000)))
            k = len(completion) + 1
            lps = np.log(rng.beta(8, 0.5, k)).astype(np.float32)
            rows.append({
                "run_id": RUN, "step": step, "policy_version": step, "environment": "arithmetic",
                "prompt_id": f"arithmetic-{(a[g] * 1000 + b[g]) % 20000:05d}", "sample_index": i % G,
                "prompt": prompt, "prompt_token_ids": [ord(c) - 40 for c in prompt], "gold": gold,
                "completion": completion, "completion_tokens": k, "token_ids": [ord(c) - 40 for c in completion] + [2],
                "token_logprobs": lps.tolist(), "logprob_sum": float(lps.sum()), "logprob_mean": float(lps.mean()),
                "finish_reason": "stop", "reward": r, "verifier_detail": "exact match" if r else "wrong answer",
                "advantage": float(adv[i]), "kept": True, "generate_seconds": float(rng.gamma(2, 0.002)),
                "score_seconds": 1e-5, "created_at": self.t0 + timedelta(seconds=step),
            })
        return pa.Table.from_pylist(rows, schema=tables.ROLLOUT_SCHEMA)

    def metrics(self, step: int) -> dict[str, float]:
        names = METRICS + (EVAL if (step + 1) % 50 == 0 else [])
        return {k: float(v) for k, v in zip(names, self.rng.random(len(names)), strict=True)}


def run_state(store: str, every: int, s3: S3Settings | None):
    from rlcadence.run_state import RunState

    cfg = RLConfig.model_validate({"store": store, "compact_every": every, "steps": 10**6,
                                   **({"s3": s3.model_dump()} if s3 else {})})
    return RunState(cfg, RUN)


def write(args, arms: dict[str, object], gen: MainJobRows) -> dict[str, float]:
    """Every step into every arm, interleaved; returns seconds per arm (writer + commit) and compaction."""
    from rlcadence.tasks.commit import commit

    secs = dict.fromkeys(arms, 0.0)
    t_start = time.perf_counter()
    for step in range(args.steps):
        table, metrics = gen.step(step), gen.metrics(step)
        for name, run in arms.items():
            t = time.perf_counter()
            tables.write_step_table(run.loc, "rollouts", RUN, step, table)
            commit.fn(run, step, metrics)
            secs[name] += time.perf_counter() - t
        if step % 1000 == 0 or step == args.steps - 1:
            print(f"  step {step + 1}/{args.steps}: {time.perf_counter() - t_start:.0f}s", flush=True)
    return secs


def compaction_cost(loc, steps: int) -> dict[str, float]:
    """The in-run compaction per step, from the metrics rows the commit stage wrote: the commit's wait for
    the previous merge (the critical path), and the background merge's wall and CPU time."""
    con = connect(loc, threads=1)
    row = con.sql("SELECT sum(time_compact_wait_s), sum(time_compact_s), sum(time_compact_cpu_s) FROM metrics").fetchone()
    return {k: 1000 * (v or 0.0) / steps for k, v in zip(("wait", "wall", "cpu"), row, strict=True)}


def layout_stats(loc) -> tuple[int, int]:
    """Files a query opens and their bytes, rollouts + metrics."""
    files = [loc.path(f) for t in layout.STEP_TABLES for f in layout.live_files(loc, t)]
    return len(files), sum(i.size for i in loc.fs.get_file_info(files))


def one_file(src, dst) -> None:
    """Every row of each table in one file (pyarrow's defaults, zstd), the baseline the targets refer to."""
    for t in layout.STEP_TABLES:
        paths = [src.path(p.path) for ps in layout.live_pieces(src, t).values() for p in ps]
        parts = [pq.read_table(src.fs.open_input_file(p)) for p in paths]
        data = pa.concat_tables(parts, promote_options="permissive")
        dst.write_bytes(tables.table_to_parquet_bytes(data), t, f"run_id={RUN}", "all.parquet")


def timed(con, sql: str, reps: int) -> tuple[float, list]:
    best, rows = float("inf"), []
    for _ in range(reps):
        t = time.perf_counter()
        rows = con.sql(sql).fetchall()
        best = min(best, time.perf_counter() - t)
    return best, rows


def measure(loc, args) -> dict:
    t = time.perf_counter()
    con = connect(loc, threads=args.threads)
    out = {"open": time.perf_counter() - t}
    for name, q in ALL_QUERIES.items():
        out[name] = timed(con, q.format(t="rollouts", mid=args.steps // 2), args.reps)
    out["files"], out["bytes"] = layout_stats(loc)
    return out


def ducklake(args, work: Path, gen: MainJobRows) -> dict:
    """The same rows into DuckLake: one transaction per step (rollouts + metrics), then its own compaction."""
    import duckdb_extension_ducklake  # noqa: F401  (pip install duckdb-extension-ducklake==1.5.5)

    ext = glob.glob(str(Path(duckdb_extension_ducklake.__path__[0]) / "extensions" / "**" / "ducklake.duckdb_extension"),
                    recursive=True)[0]
    root = work / "ducklake"
    root.mkdir()
    con = duckdb.connect(config={"threads": args.threads})
    con.execute(f"LOAD '{ext}'")
    con.execute(f"ATTACH 'ducklake:{root}/catalog.ducklake' AS lake (DATA_PATH '{root}/data/')")
    cols = ", ".join(f'"{k.replace("/", "_")}" DOUBLE' for k in METRICS + EVAL)
    steps = args.ducklake_steps
    first = gen.step(0)
    con.register("first", first)
    con.execute("CREATE TABLE lake.rollouts AS SELECT * FROM first LIMIT 0")
    con.execute(f"CREATE TABLE lake.metrics (run_id VARCHAR, step BIGINT, {cols})")
    secs = 0.0
    for step in range(steps):
        table = first if step == 0 else gen.step(step)
        m = {k.replace("/", "_"): v for k, v in gen.metrics(step).items()}
        names = ", ".join(f'"{k}"' for k in m)
        t = time.perf_counter()
        con.register("step_rows", table)
        con.execute("BEGIN")
        con.execute("INSERT INTO lake.rollouts SELECT * FROM step_rows")
        con.execute(f"INSERT INTO lake.metrics (run_id, step, {names}) VALUES (?, ?, {', '.join('?' * len(m))})",
                    [RUN, step, *m.values()])
        con.execute("COMMIT")
        secs += time.perf_counter() - t
    out = {"steps": steps, "step_ms": 1000 * secs / steps}

    def data_stats() -> tuple[int, int]:
        files = [f for f in glob.glob(f"{root}/data/**/*.parquet", recursive=True)]
        return len(files), sum(os.path.getsize(f) for f in files) + os.path.getsize(f"{root}/catalog.ducklake")

    def queries() -> dict:
        return {name: timed(con, q.format(t="lake.rollouts", mid=steps // 2), args.reps) for name, q in ALL_QUERIES.items()}

    out["as written"] = {"files": data_stats()[0], "bytes": data_stats()[1], **queries()}
    t = time.perf_counter()
    con.execute("CALL ducklake_merge_adjacent_files('lake')")
    out["merge_s"] = time.perf_counter() - t
    glob_sql = f"SELECT count(*) FROM read_parquet('{root}/data/main/rollouts/**/*.parquet')"
    out["glob rows after merge"] = con.sql(glob_sql).fetchone()[0]
    t = time.perf_counter()
    con.execute("CALL ducklake_expire_snapshots('lake', older_than => now())")
    con.execute("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)")
    out["cleanup_s"] = time.perf_counter() - t
    out["glob rows after cleanup"] = con.sql(glob_sql).fetchone()[0]
    out["compacted"] = {"files": data_stats()[0], "bytes": data_stats()[1], **queries()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--rows-per-step", type=int, default=M * G)
    ap.add_argument("--compact-every", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3, help="runs per query; the best is reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--no-local", action="store_true", help="only the SeaweedFS half (and no DuckLake arm)")
    ap.add_argument("--ducklake-steps", type=int, default=None, help="default: --steps; 0 = no DuckLake arm")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    args.ducklake_steps = args.steps if args.ducklake_steps is None else args.ducklake_steps
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rlc-scale-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = None
    try:
        places = [] if args.no_local else [("local", str(work / "local-{arm}"), None)]
        if not args.no_s3:
            server = SeaweedServer(work / "seaweed", access_key="bench", secret_key=secrets.token_hex(16)).start()
            server.make_bucket("bench")
            os.environ.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
            places.append(("s3", "s3://bench/{arm}", S3Settings(endpoint_url=server.endpoint_url)))
        results = {}
        for place, pattern, s3 in places:
            print(f"{place}: writing {args.steps} steps x {args.rows_per_step} rows into two stores", flush=True)
            arms = {"as written": run_state(pattern.format(arm="plain"), 0, s3),
                    "compaction on": run_state(pattern.format(arm="compacted"), args.compact_every, s3)}
            secs = write(args, arms, MainJobRows(args.steps, args.rows_per_step))
            res = {"step_ms": {k: 1000 * v / args.steps for k, v in secs.items()}}
            arms["compaction on"].compactor.wait()  # the last in-run merge (the run's end waits for it too)
            res["compaction_ms"] = compaction_cost(arms["compaction on"].loc, args.steps)
            res["as written"] = measure(arms["as written"].loc, args)
            res["compacted in the run"] = measure(arms["compaction on"].loc, args)
            t = time.perf_counter()
            compaction.compact_run(arms["compaction on"].loc, RUN, full=True)
            res["final_compaction_s"] = time.perf_counter() - t
            res["after compaction"] = measure(arms["compaction on"].loc, args)
            one = run_state(pattern.format(arm="one"), 0, s3).loc
            one_file(arms["as written"].loc, one)
            res["one file"] = measure(one, args)
            answers = {q: [res[lay][q][1] for lay in ("as written", "after compaction", "one file")] for q in ALL_QUERIES}
            res["same answers"] = all(same_answers(a[0], a[1]) and same_answers(a[0], a[2]) for a in answers.values())
            results[place] = res
        dl = (ducklake(args, work, MainJobRows(args.ducklake_steps, args.rows_per_step))
              if args.ducklake_steps and not args.no_local else None)
        report(args, results, dl)
    finally:
        if server:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def report(args, results: dict, dl: dict | None) -> None:
    print(f"\n{args.steps} steps x {args.rows_per_step} rows, compact_every={args.compact_every}, DuckDB "
          f"{duckdb.__version__}, threads={args.threads}, best of {args.reps}")
    layouts = ["as written", "compacted in the run", "after compaction", "one file"]
    for place, r in results.items():
        print(f"\n{place}: writer + commit per step: as written {r['step_ms']['as written']:.2f} ms, compaction on "
              f"{r['step_ms']['compaction on']:.2f} ms ({r['step_ms']['compaction on'] / r['step_ms']['as written'] - 1:+.1%}); "
              f"run-end compaction {r['final_compaction_s']:.2f} s; same answers on all layouts: {r['same answers']}")
        c = r["compaction_ms"]
        print(f"in-run compaction per step (background thread): commit waited {c['wait']:.2f} ms, merge wall "
              f"{c['wall']:.2f} ms, merge CPU {c['cpu']:.2f} ms")
        print("| layout | files | bytes (MB) | open views (s) | " + " | ".join(f"{q} (s)" for q in ALL_QUERIES) + " |")
        print("|---|---:|---:|---:|" + "---:|" * len(ALL_QUERIES))
        for lay in layouts:
            m = r[lay]
            print(f"| {lay} | {m['files']} | {m['bytes'] / 1e6:.2f} | {m['open']:.3f} | "
                  + " | ".join(f"{m[q][0]:.4f}" for q in ALL_QUERIES) + " |")
        one, comp = r["one file"], r["after compaction"]
        print(f"after compaction / one file: bytes {comp['bytes'] / one['bytes']:.2f}x; queries "
              + ", ".join(f"{q} {comp[q][0] / one[q][0]:.2f}x" for q in ALL_QUERIES))
    if dl:
        print(f"\nDuckLake (local, {dl['steps']} steps, catalog in a DuckDB file): one transaction per step "
              f"(rollouts + metrics) {dl['step_ms']:.2f} ms; merge_adjacent_files {dl['merge_s']:.2f} s; expire + "
              f"cleanup {dl['cleanup_s']:.2f} s; a plain glob over its data dir counts {dl['glob rows after merge']:,} "
              f"rows after the merge, {dl['glob rows after cleanup']:,} after the cleanup")
        print("| layout | data files | bytes (MB) | " + " | ".join(f"{q} (s)" for q in ALL_QUERIES) + " |")
        print("|---|---:|---:|" + "---:|" * len(ALL_QUERIES))
        for lay in ("as written", "compacted"):
            m = dl[lay]
            print(f"| DuckLake {lay} | {m['files']} | {m['bytes'] / 1e6:.2f} | "
                  + " | ".join(f"{m[q][0]:.4f}" for q in ALL_QUERIES) + " |")


if __name__ == "__main__":
    main()
