"""Server mode's bad input, in the main venv (no vLLM needed): an unreachable `generator_url` (nothing
listening, a listener that never answers, an HTTP server that is not vLLM) fails within 10 s naming the URL,
before any work; contradictory settings are refused at validation, naming the field."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from rlcadence.cli import main
from rlcadence.config import RLConfig
from rlcadence.engines.settings import resolve_engine
from tests.conftest import free_port


def _run(url: str, store: Path, capsys) -> tuple[int, str, float]:
    t0 = time.monotonic()
    rc = main(["run", "--set", f"generator_url={url}", "--set", "steps=1", "--store", str(store)])
    return rc, capsys.readouterr().err, time.monotonic() - t0


def test_nothing_listening_fails_fast_naming_the_url(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    rc, err, seconds = _run(url, tmp_path / "store", capsys)
    assert rc == 2 and seconds < 10
    assert f"generator_url {url}: unreachable" in err and "serve-generator" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()  # before any work: no store, no run row


def test_a_listener_that_never_answers_fails_within_10_s(tmp_path, capsys):
    with socket.socket() as sock:  # accepts connections (the kernel's backlog) and never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        rc, err, seconds = _run(url, tmp_path / "store", capsys)
    print(f"silent listener refused in {seconds:.1f} s")
    assert rc == 2 and seconds < 10
    assert f"generator_url {url}: unreachable (no answer in time" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


def test_an_http_server_that_is_not_vllm_is_refused(tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rc, err, seconds = _run(url, tmp_path / "store", capsys)
    finally:
        server.shutdown()
    assert rc == 2 and seconds < 10
    assert f"generator_url {url}: GET /health answered 404" in err


def test_server_mode_needs_no_local_vllm_and_refuses_contradictions(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # as in a venv without vLLM
    cfg = RLConfig(engine="vllm", generator_url="http://10.0.0.5:8000/")  # the server has vLLM, not this process
    assert cfg.generator_url == "http://10.0.0.5:8000"
    assert resolve_engine(cfg.engine, "cpu", cfg.generator_url) == "vllm-server"
    assert resolve_engine("auto", "cpu", cfg.generator_url) == "vllm-server"
    for bad, field in [({"generator_url": "localhost:8000"}, "generator_url"),
                       ({"generator_url": "http://h:1", "engine": "transformers"}, "engine must be auto or vllm"),
                       ({"generator_url": "http://h:1", "store": "s3://b/p"}, "generator_server.weights_dir")]:
        with pytest.raises(ValidationError, match=field):
            RLConfig.model_validate(bad)


class _DevServerWithoutExtension(http.server.BaseHTTPRequestHandler):
    """Answers like a dev-mode vLLM server started without rlcadence's worker extension: the weight-sync
    endpoints are there, an unknown collective_rpc method fails."""

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        bodies = {"/health": b"{}", "/v1/models": b'{"data": [{"id": "m"}]}', "/is_paused": b'{"is_paused": false}'}
        self._answer(200 if self.path in bodies else 404, bodies.get(self.path, b"{}"))

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(500, b'{"error": "AttributeError: no method rlc_packed_modules"}')

    def log_message(self, *args):  # keep the test's output quiet
        pass


def test_delta_sync_with_a_server_without_the_extension_is_refused(tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DevServerWithoutExtension)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        t0 = time.monotonic()
        rc = main(["run", "--set", f"generator_url={url}", "--set", "vllm.sync=delta", "--set", "steps=1",
                   "--store", str(tmp_path / "store")])
        err, seconds = capsys.readouterr().err, time.monotonic() - t0
    finally:
        server.shutdown()
    assert rc == 2 and seconds < 10, err
    assert f"generator_url {url}: vllm.sync=delta needs rlcadence's worker extension" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()
