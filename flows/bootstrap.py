"""Bootstrap flow: the embedded seed model, trained once per config and reused from the store."""

from __future__ import annotations

from prefect import flow

from rlcadence.config import DEFAULT_STORE, BootstrapConfig
from rlcadence.storage.s3 import S3Settings
from rlcadence.tasks.bootstrap import sft_bootstrap_model


@flow(name="rlcadence-bootstrap", log_prints=True)
def bootstrap(config: BootstrapConfig = BootstrapConfig(), store: str = DEFAULT_STORE,
              s3: S3Settings | None = None) -> str:
    """SFT the tiny model on the arithmetic environment (skipped when the store already has it)."""
    return sft_bootstrap_model(config, store, s3)
