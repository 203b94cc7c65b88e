"""Test-wide set-up: an isolated PREFECT_HOME, a real Prefect server, and a tiny seed model.

PREFECT_HOME is set before anything imports prefect (Prefect reads it at import), so tests never touch
the developer's ~/.prefect; the server is a real `prefect server start` subprocess on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="rlcadence-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect-home")
os.environ["RLCADENCE_CACHE"] = str(_SESSION_DIR / "cache")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)

pytest_plugins = ["tests.fixtures.seaweed", "tests.fixtures.ray_cluster"]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API server for the whole session (its own PREFECT_HOME and SQLite database)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    log = open(_SESSION_DIR / "prefect-server.log", "w")  # noqa: SIM115 - lives as long as the server
    prefect_bin = Path(sys.executable).parent / "prefect"
    url = f"http://127.0.0.1:{port}/api"
    # the UI asks PREFECT_UI_API_URL (default: port 4200) for its API: set before the server starts
    proc = subprocess.Popen(
        [str(prefect_bin), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PREFECT_API_URL": url, "PREFECT_UI_API_URL": url},
    )
    deadline = time.monotonic() + 300  # seconds; ~10 s on an idle machine, minutes on a loaded one
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"prefect server did not start; see {_SESSION_DIR / 'prefect-server.log'}")
        time.sleep(0.5)
    os.environ["PREFECT_API_URL"] = url  # for subprocesses (crash tests) too
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def seed_model(tmp_path_factory) -> Path:
    """A tiny Llama SFT-trained briefly on the arithmetic task: real weights, made in ~15 s."""
    from rlcadence.config import BootstrapConfig
    from rlcadence.models.bootstrap import train_bootstrap
    from rlcadence.models.tiny import TinyModelConfig

    out = tmp_path_factory.mktemp("seed-model")
    cfg = BootstrapConfig(steps=80, batch_size=64, model=TinyModelConfig(hidden_size=64, intermediate_size=128),
                          environment={"n_heldout": 50})
    train_bootstrap(cfg, out, log=lambda _msg: None)
    return out


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "store")
