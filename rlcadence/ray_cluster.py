"""``runner: ray``: joining the cluster, and the preflight check that it answers.

Only this module and the two that run on Ray (:mod:`rlcadence.engines.ray_actor`, :mod:`rlcadence.ray_scoring`)
import ``ray``, and only when ``runner: ray`` asks for it: a local run never pays Ray's import.

The Ray workers here run plain functions and an actor, never Prefect tasks: the stages (and so Prefect's
retries, result records and resume) stay in the flow's process, and no worker talks to the Prefect API.
``PREFECT_API_URL`` is still handed to the workers, so code that does log to Prefect reaches the same server
and never starts an ephemeral one per worker (one SQLite file shared by many: "database is locked").
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from pathlib import Path

NAMESPACE = "rlcadence"
CONNECT_TIMEOUT_S = 5.0  # per TCP attempt; the whole check stays under 15 s
RAY_MISSING = ("runner=ray needs Ray, which is not installed in this Python: pip install -e '.[ray]' "
               "(ray 2.60 and prefect-ray 0.6.0)")


class RayUnreachable(ValueError):
    """``ray_address`` names no cluster that answers (the CLI prints it as one line)."""


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) that must accept a TCP connection for ``address`` to be a live cluster."""
    if address == "auto":
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if not current.exists():
            raise RayUnreachable("ray_address=auto: no Ray cluster was started on this machine (`ray start --head`)")
        address = current.read_text().strip()
    bare = address.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnreachable(f"ray_address={address!r}: expected host:port, ray://host:port or auto")
    return host.strip("[]"), int(port)


def check_reachable(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, naming the address, when nothing listens there (before any run row or model exists).

    A plain TCP connect, not ``ray.init``: an unreachable GCS makes ``ray.init`` retry for about a minute."""
    if address is None:
        return  # a private local instance: nothing to reach
    host, port = _host_port(address)
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        waited = time.monotonic() - t0
        raise RayUnreachable(f"ray_address={address!r}: no Ray cluster answers at {host}:{port} "
                             f"({err.strerror or err} after {waited:.1f} s)") from None


def connect(address: str | None) -> None:
    """Join the cluster once per process (``ray.init`` again is an error); workers get PREFECT_API_URL."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in ("PREFECT_API_URL", "RLCADENCE_CACHE") if k in os.environ}
    local = {} if address else {"include_dashboard": False}  # options only a new local instance takes
    ray.init(address=address, namespace=NAMESPACE, runtime_env={"env_vars": env} if env else None,
             log_to_driver=False, **local)


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
