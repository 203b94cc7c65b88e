"""The bootstrap stage: SFT the embedded tiny model once per config and keep it in the store."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import get_run_logger, task

from rlcadence.config import BootstrapConfig
from rlcadence.models.bootstrap import METRICS_FILE, bootstrap_key, train_bootstrap
from rlcadence.run_state import CACHE_ROOT
from rlcadence.storage.s3 import S3Settings
from rlcadence.storage.stores import open_location


@task(name="sft-bootstrap-model", retries=1)
def sft_bootstrap_model(config: BootstrapConfig, store: str, s3: S3Settings | None = None) -> str:
    """The local directory of the bootstrap model for ``config`` (trained and published when missing)."""
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
