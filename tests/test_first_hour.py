"""A new user's first hour (issue #16), replayed: each step says what it does, refuses
what it cannot do, and never claims to be ready when it is not.

One section per item of the issue; everything runs on toy data and the toy bundle.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from splitdnn import serve
from splitdnn.cli import app

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# --- 1. `serve all` with its ports taken ---------------------------------------------------


class _AlwaysReady(http.server.BaseHTTPRequestHandler):
    """Whatever already holds the port: it answers 200 to every GET, /v2/health/ready too."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def foreign_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysReady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_serve_all_refuses_taken_ports_before_starting_anything(
    foreign_server, toy_bundle_dir, monkeypatch
):
    started = []
    monkeypatch.setattr(serve.subprocess, "Popen", lambda *a, **k: started.append(a))
    result = invoke(
        "serve", "all", "--gateway-port", foreign_server, "--head-port", free_port(),
        "--tail-port", free_port(), "--bundle", toy_bundle_dir,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "ready" not in result.stdout
    assert f"gateway {foreign_server}" in result.stderr
    assert "already in use" in result.stderr and "--gateway-port" in result.stderr
    assert started == []


def test_serve_all_refuses_one_port_for_two_services(toy_bundle_dir):
    result = invoke("serve", "all", "--head-port", "8123", "--tail-port", "8123")
    assert result.exit_code == 2 and "three different ports" in result.stderr


def test_readiness_counts_only_the_started_process(foreign_server):
    """A 200 from another server on the port is not the started child being ready."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        url = f"http://127.0.0.1:{foreign_server}/v2/health/ready"
        assert serve.wait_ready(url, timeout=1.0, process=child) is False
        assert serve.wait_ready(url, timeout=1.0) is True  # no process: any 200 will do
    finally:
        child.kill()
        child.wait()
