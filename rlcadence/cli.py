"""The ``rlcadence`` command: run, resume, sql, runs, report, bootstrap, export-prompts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from rlcadence.config import DEFAULT_STORE, RLConfig
from rlcadence.environments.datasets import DatasetError
from rlcadence.presets import PRESETS
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


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"config file {p} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


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
    if config.model is not None:
        from rlcadence.models.source import resolve_model_dir

        resolve_model_dir(config.model)  # a missing model fails here, naming the path, before any work
    preflight_environments(config)
    config.store_location()  # an unusable store fails here, naming endpoint and bucket, before any work
    from rlcadence.flows.rl import rl

    summary = rl(config)
    print_summary(summary)
    return 0


def preflight_environments(config: RLConfig) -> None:
    """Before the flow starts: read every dataset file (a missing file or, in fail mode, bad rows stop here)
    and find every reward-model and judge directory (a missing one stops here, named)."""
    from rlcadence.environments.datasets import load_prompts
    from rlcadence.models.source import resolve_model_dir

    for env in config.environments:
        if env.source is not None:
            load_prompts(env.source.model_copy(update={"environment": env.name}))
        for model in (env.reward_model, env.judge.model if env.judge else None):
            if model is not None:
                resolve_model_dir(model)


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
    from rlcadence.flows.rl import rl
    from rlcadence.storage.stores import open_location
    from rlcadence.storage.tables import read_run_params

    params = read_run_params(open_location(args.store), args.run_id)
    params.pop("model_dir", None)
    config = RLConfig.model_validate(params | {"run_id": args.run_id, "store": args.store})
    print_summary(rl(config))
    return 0


def cmd_sql(args) -> int:
    from rlcadence.storage.query import query
    from rlcadence.storage.stores import open_location

    columns, rows = query(open_location(args.store), args.query)
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


RUNS_SQL = """
SELECT r.run_id, r.status, max(m.step) AS last_step,
       round(arg_max(m.reward_mean, m.step), 3) AS last_reward,
       round(arg_max(m.eval_accuracy, CASE WHEN m.eval_accuracy IS NOT NULL THEN m.step END), 3) AS last_eval_acc,
       r.updated_at
FROM runs r LEFT JOIN metrics m USING (run_id)
GROUP BY r.run_id, r.status, r.updated_at ORDER BY r.updated_at DESC
"""


def cmd_runs(args) -> int:
    from rlcadence.storage.query import connect
    from rlcadence.storage.stores import open_location

    con = connect(open_location(args.store))
    views = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if "runs" not in views:
        print(f"no runs in {args.store}")
        return 0
    sql = RUNS_SQL if "metrics" in views else "SELECT run_id, status, updated_at FROM runs ORDER BY updated_at DESC"
    rel = con.sql(sql)
    print_table(rel.columns, rel.fetchall())
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
    r.add_argument("--run-id")
    r.set_defaults(fn=cmd_run)
    b = sub.add_parser("bootstrap", help="build and SFT the embedded tiny model (cached in the store)")
    config_args(b)
    b.set_defaults(fn=cmd_bootstrap)
    rs = sub.add_parser("resume", help="continue a failed or interrupted run from its last completed stage")
    rs.add_argument("run_id")
    rs.add_argument("--store", default=DEFAULT_STORE)
    rs.set_defaults(fn=cmd_resume)
    q = sub.add_parser("sql", help="query the store with DuckDB (views: rollouts, metrics, runs, rejected)")
    q.add_argument("query")
    q.add_argument("--store", default=DEFAULT_STORE)
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.set_defaults(fn=cmd_sql)
    ls = sub.add_parser("runs", help="list runs with their last step and key metrics")
    ls.add_argument("--store", default=DEFAULT_STORE)
    ls.set_defaults(fn=cmd_runs)
    rp = sub.add_parser("report", help="HTML + PNG report of runs from the store (several runs: same axes)")
    rp.add_argument("runs", nargs="+", metavar="RUN")
    rp.add_argument("--store", default=DEFAULT_STORE)
    rp.add_argument("--out", default="rlcadence-report", help="output directory (index.html, metrics.png, ...)")
    rp.add_argument("--title")
    rp.set_defaults(fn=cmd_report)
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
    except (FileNotFoundError, DatasetError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
