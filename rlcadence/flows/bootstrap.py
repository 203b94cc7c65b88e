"""Bootstrap flow: the embedded seed model, trained once per config and reused from the store."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task

from rlcadence.config import DEFAULT_STORE, BootstrapConfig
from rlcadence.storage.location import open_location
from rlcadence.storage.s3 import S3Settings
from rlcadence.tasks.bootstrap import bootstrap_key, train_bootstrap
from rlcadence.tasks.runtime import CACHE_ROOT

METRICS_FILE = "bootstrap_metrics.json"


@task(name="sft-bootstrap-model", retries=1)
def sft_bootstrap_model(config: BootstrapConfig, store: str, s3: S3Settings | None = None) -> str:
    loc = open_location(store, s3)
    key = bootstrap_key(config)
    if not loc.dir_complete("models", key):
        log = get_run_logger()
        with tempfile.TemporaryDirectory(prefix="rlc-boot-") as tmp:
            metrics = train_bootstrap(config, Path(tmp), log=log.info)
            (Path(tmp) / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
            loc.put_dir(Path(tmp), "models", key)
        log.info(f"bootstrap model {key}: held-out accuracy {metrics['bootstrap/heldout_accuracy']:.3f}")
    return str(loc.get_dir(CACHE_ROOT / "models" / key, "models", key))


@flow(name="rlcadence-bootstrap", log_prints=True)
def bootstrap(config: BootstrapConfig = BootstrapConfig(), store: str = DEFAULT_STORE,
              s3: S3Settings | None = None) -> str:
    """SFT the tiny model on the arithmetic task (skipped when the store already has it)."""
    return sft_bootstrap_model(config, store, s3)


def bootstrap_metrics(model_dir: str) -> dict[str, float]:
    path = Path(model_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
