"""Bootstrap flow: the embedded seed model, trained once per config and reused from the store."""

from __future__ import annotations

from prefect import flow, runtime

from rlcadence.config import DEFAULT_STORE, BootstrapConfig
from rlcadence.models.bootstrap import bootstrap_key
from rlcadence.storage.s3 import S3Settings
from rlcadence.tasks.bootstrap import sft_bootstrap_model


def bootstrap_run_name() -> str:
    """``bootstrap · <model key>``: one name per bootstrap config, the key its model is stored under."""
    raw = runtime.flow_run.parameters.get("config", BootstrapConfig())
    config = raw if isinstance(raw, BootstrapConfig) else BootstrapConfig.model_validate(raw)
    return f"bootstrap · {bootstrap_key(config)}"


@flow(name="rlcadence-bootstrap", flow_run_name=bootstrap_run_name, log_prints=True)
def bootstrap(config: BootstrapConfig = BootstrapConfig(), store: str = DEFAULT_STORE,
              s3: S3Settings | None = None) -> str:
    """SFT the tiny model on the arithmetic environment (skipped when the store already has it)."""
    return sft_bootstrap_model(config, store, s3)
