"""The eval flow: one model directory or stored run checkpoint on eval sets (`rlcadence eval`, and the
``eval`` deployment, so a finished run's checkpoints can be evaluated on a schedule from the UI).

    rows, summary <- eval-model(target, eval sets)        # evals table + a metrics row, under eval_id
"""

from __future__ import annotations

from prefect import flow, runtime

from rlcadence.eval_config import EvalConfig
from rlcadence.tasks.eval_model import eval_model


def eval_run_name() -> str:
    raw = runtime.flow_run.parameters.get("config")
    model = raw.model if isinstance(raw, EvalConfig) else (raw or {}).get("model", "?")
    return f"eval · {model}"


@flow(name="rlcadence-eval", flow_run_name=eval_run_name, log_prints=True)
def evaluate(config: EvalConfig) -> dict:
    """Evaluate ``config.model`` (MODEL_DIR, RUN or RUN@STEP) on its eval sets; returns the summary."""
    summary = eval_model(config)
    print(f"eval {summary['eval_id']} step {summary['step']} ({summary['model']}): "
          + ", ".join(f"{k.removeprefix('eval/')}={v:.3f}" for k, v in summary.items()
                      if k.startswith("eval/") and isinstance(v, float)))
    return summary
