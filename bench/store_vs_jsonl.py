"""Our rollout store (hive-partitioned zstd Parquet + DuckDB) against a JSONL dump, locally and on S3.

    .venv/bin/python bench/store_vs_jsonl.py                      # 100 steps x 10,000 rows = 1M rollouts
    .venv/bin/python bench/store_vs_jsonl.py --steps 5 --rows-per-step 2000 --reps 1   # a quick look

Synthetic GRPO-like rollouts with every column of ``ROLLOUT_SCHEMA``: groups of 8 samples per prompt,
completion lengths ~lognormal (median 150 tokens), Zipf-distributed token ids and words, float32
logprobs mostly near 0, 0/1 rewards from a per-prompt difficulty that improves with the step.

Both writers start from the same list of row dicts (what a rollout worker holds):
  * parquet: ``pa.Table.from_pylist`` + ``tables.write_step_table`` (zstd, temp+fsync+rename locally);
  * jsonl:   one ``json.dumps`` per row, one file per step (what verl / OpenRLHF-style dumps do),
             written locally with a plain ``write`` (no fsync: the JSONL side gets the cheaper path).
Queries: DuckDB over the Parquet views of ``rlcadence.storage.query.connect`` vs DuckDB ``read_json``
over the JSONL files with an explicit schema of the queried columns (its fastest mode here; one
auto-detect run is shown too). pandas is not used: 1M rows of token lists would not fit its read_json
comfortably. The same DuckDB settings (threads, memory limit) for both; each query is run ``--reps`` times, best kept.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from rlcadence.storage.location import StoreLocation
from rlcadence.storage.query import connect
from rlcadence.storage.s3 import S3Settings, configure_duckdb, open_s3_location
from rlcadence.storage.seaweed import SeaweedServer
from rlcadence.storage.stores import open_location
from rlcadence.storage.tables import ROLLOUT_SCHEMA, write_step_table

RUN_ID = "bench-grpo-0001"
GROUP = 8  # samples per prompt
VOCAB = 151_936  # Qwen2 tokenizer size
MAX_TOKENS = 1024

QUERIES = {
    "mean reward per step": "SELECT step, avg(reward) AS r FROM {t} GROUP BY step ORDER BY step",
    "pass rate per prompt": "SELECT prompt_id, avg(reward) AS pass_rate FROM {t} GROUP BY prompt_id ORDER BY prompt_id",
    "zero-advantage groups per step": (
        "SELECT step, count(*) FILTER (WHERE lo = hi) AS zero_groups, count(*) AS groups FROM "
        "(SELECT step, prompt_id, min(reward) AS lo, max(reward) AS hi FROM {t} GROUP BY step, prompt_id) "
        "GROUP BY step ORDER BY step"
    ),
}

# The JSONL side gets its fastest DuckDB reader: an explicit schema of just the columns the queries use
# (about 4x faster than auto-detection, which also materialises the token lists).
JSON_OPTS = "format = 'newline_delimited'"
JSON_COLUMNS = "{step: 'BIGINT', prompt_id: 'VARCHAR', reward: 'DOUBLE'}"


# -- synthetic rollouts ----------------------------------------------------------------------------------
class RolloutGen:
    """Deterministic synthetic rollouts, one step at a time (a step is never held twice in memory)."""

    def __init__(self, steps: int, rows_per_step: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.steps, self.rows = steps, rows_per_step
        self.n_prompts = max(rows_per_step // GROUP * 6, 1)  # a dataset ~6x the prompts one step uses
        syll = ["ka", "lo", "mi", "ne", "tu", "ra", "si", "po", "de", "an", "th", "er", "in", "qu", "x", "z"]
        words = {"".join(self.rng.choice(syll, self.rng.integers(1, 4))) for _ in range(30_000)}
        words |= {str(i) for i in range(1000)} | {
            "=",
            "+",
            "-",
            "*",
            "/",
            "(",
            ")",
            "\\frac",
            "\\boxed{",
            "}",
        }
        self.words = np.array(sorted(words))
        ranks = np.arange(1, len(self.words) + 1)
        word_p = (1 / ranks**1.1) / (1 / ranks**1.1).sum()
        self.rng.shuffle(word_p)
        self.word_cdf = np.cumsum(word_p)
        self.prompts = [self._text(int(n)) for n in self.rng.integers(40, 120, self.n_prompts)]
        self.golds = [str(int(g)) for g in self.rng.integers(0, 10_000, self.n_prompts)]
        self.difficulty = self.rng.beta(0.6, 0.6, self.n_prompts)  # many prompts (almost) always/never solved
        self.t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def _words(self, n: int) -> np.ndarray:
        """``n`` Zipf-distributed words."""
        idx = np.searchsorted(self.word_cdf, self.rng.random(n) * self.word_cdf[-1])
        return self.words[np.minimum(idx, len(self.words) - 1)]

    def _text(self, n_words: int) -> str:
        return " ".join(self._words(n_words))

    def step_rows(self, step: int) -> list[dict]:
        rng, n, g = self.rng, self.rows, GROUP
        n_groups = n // g
        pids = rng.choice(self.n_prompts, n_groups, replace=False)
        p_solve = np.clip(self.difficulty[pids] + 0.3 * step / max(self.steps - 1, 1), 0, 1)
        reward = (rng.random((n_groups, g)) < p_solve[:, None]).astype(np.float64)  # [G, g]
        mean, std = reward.mean(1, keepdims=True), reward.std(1, keepdims=True)
        adv = ((reward - mean) / (std + 1e-6)).ravel()
        kept = np.repeat(std[:, 0] > 0, g)
        reward = reward.ravel()
        lengths = np.clip(rng.lognormal(np.log(150), 0.5, n), 8, MAX_TOKENS).astype(np.int64)
        total = int(lengths.sum())
        zipf = np.minimum(rng.zipf(1.2, total), VOCAB) - 1
        token_ids = ((zipf * 7919) % VOCAB).astype(np.int32)  # [total] flat, ragged by `lengths`
        logprobs = np.log(rng.beta(6, 0.4, total)).astype(np.float32)  # [total], mostly near 0
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        lp_sum = np.add.reduceat(logprobs.astype(np.float64), bounds[:-1])
        gen_s, score_s = rng.gamma(2.0, 0.8, n), rng.gamma(2.0, 0.002, n)
        n_words = (lengths * 3) // 4  # ~0.75 words per token
        words = self._words(int(n_words.sum())).tolist()
        wbounds = np.concatenate([[0], np.cumsum(n_words)]).tolist()
        rows = []
        for i in range(n):
            k = int(pids[i // g])
            a, b = bounds[i], bounds[i + 1]
            r = float(reward[i])
            rows.append(
                {
                    "run_id": RUN_ID,
                    "step": step,
                    "policy_version": max(step - 1, 0),
                    "environment": "gsm8k",
                    "prompt_id": f"gsm8k-{k:06d}",
                    "sample_index": i % g,
                    "prompt": self.prompts[k],
                    "gold": self.golds[k],
                    "completion": " ".join(words[wbounds[i] : wbounds[i + 1]])
                    + f" \\boxed{{{self.golds[k] if r else 0}}}",
                    "completion_tokens": int(lengths[i]),
                    "token_ids": token_ids[a:b].tolist(),
                    "token_logprobs": logprobs[a:b].tolist(),
                    "logprob_sum": float(lp_sum[i]),
                    "logprob_mean": float(lp_sum[i] / lengths[i]),
                    "finish_reason": "length" if lengths[i] == MAX_TOKENS else "stop",
                    "reward": r,
                    "verifier_detail": "correct" if r else "wrong answer",
                    "advantage": float(adv[i]),
                    "kept": bool(kept[i]),
                    "generate_seconds": float(gen_s[i]),
                    "score_seconds": float(score_s[i]),
                    "created_at": self.t0 + timedelta(seconds=60 * step + i * 0.001),
                }
            )
        return rows


# -- writers -------------------------------------------------------------------------------------------------
def to_parquet_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA)


def to_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, default=str) + "\n" for r in rows).encode()


def jsonl_key(step: int) -> tuple[str, str]:
    return ("jsonl", f"rollouts-step{step:05d}.jsonl")


def write_jsonl_local(loc: StoreLocation, payload: bytes, step: int) -> None:
    p = Path(loc.path(*jsonl_key(step)))
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:  # the plain write other frameworks do (no temp, no fsync)
        f.write(payload)


# -- measuring -------------------------------------------------------------------------------------------------
def bytes_local(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def bytes_s3(client, bucket: str, prefix: str) -> int:
    total, token = 0, None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = client.list_objects_v2(**kw)
        total += sum(o["Size"] for o in page.get("Contents", []))
        if not page.get("IsTruncated"):
            return total
        token = page["NextContinuationToken"]


def timed_queries(con, source: str, reps: int, queries: dict | None = None) -> dict[str, tuple[float, list]]:
    out = {}
    for name, sql in (queries or QUERIES).items():
        best, rows = float("inf"), None
        for _ in range(reps):
            t = time.perf_counter()
            rows = con.sql(sql.format(t=source)).fetchall()
            best = min(best, time.perf_counter() - t)
        out[name] = (best, rows)
    return out


def same_answers(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x[0] == y[0] and all(abs(float(u) - float(v)) < 1e-9 for u, v in zip(x[1:], y[1:], strict=True))
        for x, y in zip(a, b, strict=True)
    )


def tune(con: duckdb.DuckDBPyConnection, threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    return con


def json_connection(loc: StoreLocation, threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """A plain DuckDB connection for read_json (the store's own connection is locked: no file access)."""
    con = duckdb.connect()
    if not loc.is_local:
        configure_duckdb(con, loc)
    return tune(con, threads, memory_limit)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rows-per-step", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=2, help="runs per query; the best is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir, removed at the end")
    ap.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS half")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--memory-limit", default="6GB")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="rlc-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    local = open_location(str(work / "local"))
    server = s3loc = None
    if not args.no_s3:
        server = SeaweedServer(work / "seaweed", access_key="bench", secret_key=secrets.token_hex(16)).start()
        bucket = server.make_bucket("bench")
        os.environ.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
        s3loc = open_s3_location(f"s3://{bucket}/store", S3Settings(endpoint_url=server.endpoint_url))

    try:
        run(args, work, local, server, s3loc)
    finally:
        if server:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(
    args, work: Path, local: StoreLocation, server: SeaweedServer | None, s3loc: StoreLocation | None
) -> None:
    gen = RolloutGen(args.steps, args.rows_per_step)
    secs = {
        k: 0.0
        for k in ("parquet_encode", "jsonl_encode", "parquet_local", "jsonl_local", "parquet_s3", "jsonl_s3")
    }
    n_rows = 0
    t_start = time.perf_counter()
    for step in range(args.steps):
        rows = gen.step_rows(step)
        n_rows += len(rows)
        t = time.perf_counter()
        table = to_parquet_table(rows)
        secs["parquet_encode"] += time.perf_counter() - t
        t = time.perf_counter()
        payload = to_jsonl(rows)
        secs["jsonl_encode"] += time.perf_counter() - t
        del rows
        # write_step_table does the zstd encoding too: it is timed inside each destination's write
        t = time.perf_counter()
        write_step_table(local, "rollouts", RUN_ID, step, table)
        secs["parquet_local"] += time.perf_counter() - t
        t = time.perf_counter()
        write_jsonl_local(local, payload, step)
        secs["jsonl_local"] += time.perf_counter() - t
        if s3loc is not None:
            t = time.perf_counter()
            write_step_table(s3loc, "rollouts", RUN_ID, step, table)
            secs["parquet_s3"] += time.perf_counter() - t
            t = time.perf_counter()
            s3loc.write_bytes(payload, *jsonl_key(step))
            secs["jsonl_s3"] += time.perf_counter() - t
        if step % 10 == 0 or step == args.steps - 1:
            print(
                f"  step {step + 1}/{args.steps}: {n_rows:,} rows, {time.perf_counter() - t_start:.0f}s",
                flush=True,
            )
        del table, payload

    results = {}
    places = [("local", local)] + ([("s3", s3loc)] if s3loc is not None else [])
    for place, loc in places:
        if place == "local":
            size_pq = bytes_local(work / "local" / "rollouts")
            size_js = bytes_local(work / "local" / "jsonl")
        else:
            client = server.client()
            size_pq = bytes_s3(client, "bench", "store/rollouts/")
            size_js = bytes_s3(client, "bench", "store/jsonl/")
        con = connect(loc, threads=args.threads, memory_limit=args.memory_limit)
        con_js = json_connection(loc, args.threads, args.memory_limit)
        json_glob = loc.uri_of("jsonl", "*.jsonl")
        q_pq = timed_queries(con, "rollouts", args.reps)
        q_js = timed_queries(
            con_js, f"read_json('{json_glob}', {JSON_OPTS}, columns = {JSON_COLUMNS})", args.reps
        )
        if place == "local":  # what a first read_json without a schema costs (auto-detect, all columns)
            first = {k: QUERIES[k] for k in list(QUERIES)[:1]}
            q_js_auto = timed_queries(con_js, f"read_json('{json_glob}', {JSON_OPTS})", 1, first)
        agree = all(same_answers(q_pq[k][1], q_js[k][1]) for k in QUERIES)
        rate = {
            fmt: n_rows / (secs[f"{fmt}_encode"] + secs[f"{fmt}_{place}"]) for fmt in ("parquet", "jsonl")
        }
        results[place] = dict(size=(size_pq, size_js), rate=rate, q=(q_pq, q_js), agree=agree)
        if place == "local":
            results[place]["auto"] = q_js_auto

    print_report(args, n_rows, secs, results)


def print_report(args, n_rows: int, secs: dict, results: dict) -> None:
    print()
    print(
        f"rows: {n_rows:,} ({args.steps} steps x {args.rows_per_step:,}), DuckDB {duckdb.__version__}, "
        f"threads={args.threads}, memory_limit={args.memory_limit}, best of {args.reps}"
    )
    print(
        f"encode (from row dicts, once): parquet from_pylist {secs['parquet_encode']:.1f}s, "
        f"jsonl json.dumps {secs['jsonl_encode']:.1f}s"
    )
    print()
    print("| where | metric | Parquet (ours) | JSONL | ratio |")
    print("|---|---|---:|---:|---:|")
    for place, r in results.items():
        pq, js = r["size"]
        print(f"| {place} | bytes | {pq / 2**20:,.0f} MiB | {js / 2**20:,.0f} MiB | {js / pq:.1f}x smaller |")
        rp, rj = r["rate"]["parquet"], r["rate"]["jsonl"]
        print(f"| {place} | rows written/s | {rp:,.0f} | {rj:,.0f} | {rp / rj:.1f}x faster |")
        q_pq, q_js = r["q"]
        for name in QUERIES:
            a, b = q_pq[name][0], q_js[name][0]
            print(f"| {place} | {name} | {a * 1000:,.0f} ms | {b * 1000:,.0f} ms | {b / a:.0f}x faster |")
        if "auto" in r:
            name = next(iter(r["auto"]))
            a, b = q_pq[name][0], r["auto"][name][0]
            print(
                f"| {place} | {name}, read_json auto-detect | {a * 1000:,.0f} ms | {b * 1000:,.0f} ms | {b / a:.0f}x faster |"
            )
        print(f"| {place} | same answers from both | {'yes' if r['agree'] else 'NO'} | | |")


if __name__ == "__main__":
    main()
