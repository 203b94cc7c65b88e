"""The run's artifacts in the Prefect UI, keyed by run id (the Artifacts page keeps each key's history):

- ``<run>-summary``  markdown: config diff, cadence, held-out before/after, wall time per stage, store + SQL;
- ``<run>-metrics``  table: the metrics every ``eval_every`` steps;
- ``<run>-progress`` progress, updated every step (step, reward, held-out, ETA in its description);
- ``<run>-plots``    markdown with one PNG as a data URI: reward, held-out accuracy, completion length,
  entropy, KL, update sparsity. Prefect 3.8.8's UI renders that image on the artifact's page (measured in
  Chromium: the img element loads, naturalWidth > 0; see tests/integration/test_ui_browser.py).

One flow run makes one artifact per key and updates it in place (a PATCH), so its page shows four cards,
not one per evaluation; a resumed or retried flow run adds a new version under the same key.
Artifact calls never fail the run: the UI is a view, the store is the record.
"""

from __future__ import annotations

import contextvars
import json
import math
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from prefect import get_client, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.actions import ArtifactUpdate

from rlcadence.config import RLConfig, eval_due
from rlcadence.reporting.summary import config_diff, summary_markdown
from rlcadence.reporting.terminal import TerminalProgress
from rlcadence.run_state import CACHE_ROOT, RunState
from rlcadence.storage.history import metric_rows
from rlcadence.tasks.commit import metrics_columns
from rlcadence.tasks.ui import cadence

TABLE_COLUMNS = ("step", "reward_mean", "reward_accuracy", "eval_accuracy", "rollout_mean_length",
                 "rollout_kept_fraction", "train_entropy", "kl_mean", "sparsity_unchanged_vs_last_sync",
                 "train_loss")


def artifact_key(run_id: str, what: str) -> str:
    """Prefect keys take lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{run_id}-{what}".lower()).strip("-")


def table_rows(rows: list[dict], cfg: RLConfig) -> list[dict]:
    return [{c: r.get(c) for c in TABLE_COLUMNS} for r in rows if eval_due(cfg, r["step"] + 1)]


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


PROGRESS_EVERY_S = 2.0  # an update is an API write: every step cost ~3% of the tiny model's step wall


class RunBoard:
    """One flow run's view of the run: created after ``start_run``, told of every committed step.

    Artifact writes are API calls (and the plots a matplotlib render): they go to one background thread, with
    a copy of the caller's Prefect context so each lands on this flow run, and a copy of the rows, so the
    step loop never waits on the UI. A progress update is dropped while an earlier write is still in flight;
    evaluations and the final state are always written (``close`` waits for them)."""

    def __init__(self, run: RunState, start_step: int, before: dict):
        self.run, self.cfg, self.start_step = run, run.config, start_step
        self.before = before.get("eval/accuracy")
        self.rows = metric_rows(run.loc, [run.run_id])[run.run_id] if start_step else []
        self.walls: list[float] = []
        self._ids: dict[str, object] = {}  # artifact key -> id of this flow run's artifact
        self._t = time.perf_counter()
        self._ui = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlc-ui")
        self._pending: Future | None = None
        if start_step:
            get_run_logger().info(f"run {run.run_id}: resumed at step {start_step}; "
                                  f"{len(self.rows)} steps committed before this flow run")
        self.tensorboard = _tensorboard(run)
        self.terminal = TerminalProgress(self.cfg.steps, start_step, f"{self.cfg.run_label} · {run.run_id}")
        self.progress_id = self._safe(create_progress_artifact, self._percent(self.rows), key=self._key("progress"),
                                      description=self._progress_text(self.rows, self.walls))
        self.publish(list(self.rows), [])  # also starts the progress artifact's 2 s clock

    def _key(self, what: str) -> str:
        return artifact_key(self.run.run_id, what)

    def _safe(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - a UI hiccup must not fail a training run
            get_run_logger().warning(f"artifact not written ({getattr(fn, '__name__', fn)}): {err}")
            return None

    def _percent(self, rows: list[dict]) -> float:
        done = rows[-1]["step"] + 1 if rows else 0
        return 100.0 * done / self.cfg.steps

    def _after(self, rows: list[dict]) -> float | None:
        evals = [r["eval_accuracy"] for r in rows if r.get("eval_accuracy") is not None]
        return evals[-1] if evals else self.before

    @property
    def after(self) -> float | None:
        return self._after(self.rows)

    def _progress_text(self, rows: list[dict], walls: list[float]) -> str:
        if not rows:
            return f"step 0/{self.cfg.steps}"
        last = rows[-1]
        text = f"step {last['step'] + 1}/{self.cfg.steps} · reward {last.get('reward_mean', 0.0):.3f}"
        after = self._after(rows)
        if after is not None:
            text += f" · held-out {100 * after:.1f}%"
        if walls:
            mean = sum(walls) / len(walls)
            text += f" · ETA {_eta(mean * (self.cfg.steps - last['step'] - 1))}"
        return text

    def step_done(self, step: int, metrics: dict[str, float]) -> None:
        """After ``commit``: the terminal bar every step, the progress artifact at most every ``PROGRESS_EVERY_S``;
        summary, table and plots every ``eval_every`` steps (both on the UI thread)."""
        now = time.perf_counter()
        self.walls.append(now - self._t)
        self._t = now
        self.rows.append({"step": step, **metrics_columns(metrics)})
        if self.tensorboard is not None:
            self.tensorboard.log(step, metrics)
        self.terminal.update(step + 1, self.rows[-1].get("reward_mean"), self.after)
        if eval_due(self.cfg, step + 1):
            self._in_background(self.publish)
        elif now - self._progress_at >= PROGRESS_EVERY_S and (self._pending is None or self._pending.done()):
            self._progress_at = now
            self._in_background(self._update_progress)
        self._t = time.perf_counter()

    def _in_background(self, job) -> None:
        context = contextvars.copy_context()  # Prefect's flow/task run context: the artifact's owner
        self._pending = self._ui.submit(context.run, job, list(self.rows), list(self.walls))

    def _update_progress(self, rows: list[dict], walls: list[float]) -> None:
        self._progress_at = time.perf_counter()
        if self.progress_id is not None:
            self._safe(update_progress_artifact, self.progress_id, self._percent(rows),
                       description=self._progress_text(rows, walls))

    def close(self) -> None:
        """The final artifacts; the terminal bar stays on screen above the CLI's summary."""
        self.terminal.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        self._ui.shutdown(wait=True)
        self.publish(list(self.rows), list(self.walls))

    def publish(self, rows: list[dict], walls: list[float]) -> None:
        """Progress, summary, metrics table and plots as of ``rows`` (the last committed step)."""
        self._update_progress(rows, walls)
        cfg, run_id = self.cfg, self.run.run_id
        done = rows[-1]["step"] + 1 if rows else 0
        md = summary_markdown(
            run_id=run_id, label=cfg.run_label, cadence=cadence(cfg.sync_every),
            diff=config_diff(cfg, RLConfig()), before=self.before, after=self._after(rows), steps_done=done,
            steps=cfg.steps, resumed_from=self.start_step, rows=rows,
            step_wall_s=sum(walls) / len(walls) if walls else None, store=self.run.loc.uri)
        self._safe(self._put, "summary", md, f"{cfg.run_label} · {run_id}")
        table = table_rows(rows, cfg)
        if table:
            self._safe(self._put, "metrics", table, f"metrics every {cfg.eval_every} steps")
        if rows:
            self._safe(self._plots, rows)

    def _put(self, what: str, data: str | list[dict], description: str) -> None:
        """Create this flow run's artifact for ``what`` once, then update it in place."""
        key = self._key(what)
        if key not in self._ids:
            create = create_markdown_artifact if isinstance(data, str) else create_table_artifact
            self._ids[key] = create(data, key=key, description=description)
            return
        payload = data if isinstance(data, str) else json.dumps(_finite(data))
        with get_client(sync_client=True) as client:
            client.update_artifact(self._ids[key], ArtifactUpdate(data=payload, description=description))

    def _plots(self, rows: list[dict]) -> None:
        from rlcadence.reporting.plots import data_uri, metrics_figure

        png = metrics_figure({self.run.run_id: rows}, title=f"{self.cfg.run_label} · {self.run.run_id}")
        self._put("plots", f"![{self.run.run_id} curves]({data_uri(png)})\n",
                  "reward, held-out accuracy, length, entropy, KL, sparsity")


def tensorboard_dir(run: RunState) -> Path:
    """``<store>/tensorboard/<run_id>`` for a local store; event files cannot append on S3, so the cache there."""
    if run.loc.is_local:
        return Path(run.loc.path("tensorboard", run.run_id))
    return CACHE_ROOT / "tensorboard" / run.run_id


def _tensorboard(run: RunState):
    if "tensorboard" not in run.config.loggers:
        return None
    from rlcadence.reporting.tensorboard import TensorBoardLogger

    logger = TensorBoardLogger(tensorboard_dir(run))
    get_run_logger().info(f"TensorBoard event files: tensorboard --logdir {logger.logdir}")
    return logger


def _finite(rows: list[dict]) -> list[dict]:
    """JSON has no NaN: the UI's table shows None instead (as create_table_artifact does)."""
    return [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]
