"""The run's summary in markdown: what differs from the defaults, how it went, where its data is."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

# metrics-table columns of one step's stage timings, in loop order
STAGE_TIMES = {"generate": "time_generate_s", "score": "time_score_s", "train": "time_train_s",
               "checkpoint": "time_checkpoint_s", "evaluate": "time_eval_s"}


def flatten(d: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay whole)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out |= flatten(v, key + ".")
        else:
            out[key] = v
    return out


def config_diff(config: BaseModel, defaults: BaseModel) -> list[tuple[str, object, object]]:
    """(field, value, default) for every leaf field whose value differs from the default."""
    now, base = flatten(config.model_dump(mode="json")), flatten(defaults.model_dump(mode="json"))
    return [(k, now.get(k), base.get(k)) for k in sorted(set(now) | set(base)) if now.get(k) != base.get(k)]


def stage_seconds(rows: list[dict]) -> dict[str, float]:
    """Total seconds per stage over the rows (a stage absent from every row is left out)."""
    out = {}
    for stage, col in STAGE_TIMES.items():
        vals = [r[col] for r in rows if r.get(col) is not None]
        if vals:
            out[stage] = float(sum(vals))
    return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def example_sql(run_id: str, store: str) -> str:
    return (f"rlcadence sql \"SELECT step, reward_mean, eval_accuracy FROM metrics WHERE run_id = '{run_id}' "
            f"ORDER BY step\" --store {store}")


def summary_markdown(*, run_id: str, label: str, cadence: str, diff: list[tuple[str, object, object]],
                     before: float | None, after: float | None, steps_done: int, steps: int,
                     resumed_from: int, rows: list[dict], step_wall_s: float | None, store: str) -> str:
    """The summary artifact: header, held-out before/after, wall time per stage, config diff, store + SQL."""
    lines = [f"# {label} · {run_id}", "",
             f"**cadence** {cadence} · **steps** {steps_done}/{steps}"
             + (f" · **resumed at step {resumed_from}** ({resumed_from} steps committed before)" if resumed_from else ""),
             "", "| held-out accuracy | value |", "|---|---|",
             f"| before RL (step 0) | {_pct(before)} |", f"| latest | {_pct(after)} |"]
    if before is not None and after is not None:
        lines.append(f"| gain | {100 * (after - before):+.1f} points |")
    times = stage_seconds(rows)
    if times:
        total = sum(times.values())
        lines += ["", "## Wall time per stage", "", "| stage | seconds | share |", "|---|---|---|"]
        lines += [f"| {s} | {t:.1f} | {100 * t / total:.0f}% |" for s, t in times.items()]
        if step_wall_s:
            lines.append(f"\nmean step wall time (this process): {step_wall_s:.3f} s")
    lines += ["", "## Config (differences from the defaults)", ""]
    if diff:
        lines += ["| field | value | default |", "|---|---|---|"]
        lines += [f"| `{k}` | `{v}` | `{d}` |" for k, v, d in diff]
    else:
        lines.append("all defaults")
    lines += ["", "## Data", "", f"store: `{store}`", "", "```sh", example_sql(run_id, store), "```"]
    return "\n".join(lines) + "\n"
